package gateway

import "sync"

// deviceCounts counts each device's requests in the scheduling queue, for
// admission.max_queue_per_device: without it one device publishing far beyond
// its share fills admission.max_queue, and every device is then refused. Its map
// holds only the devices with requests queued, so it stays as small as the
// queue. Safe for concurrent use.
type deviceCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// take counts one more request of device unless it has limit queued already
// (limit 0: no limit), and reports whether it counted it.
func (d *deviceCounts) take(device string, limit int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.n[device]
	if limit > 0 && n >= limit {
		return false
	}
	if d.n == nil {
		d.n = map[string]int{}
	}
	d.n[device] = n + 1
	return true
}

// add counts one more request of device, whatever its limit (a request read
// back from the journal at start-up).
func (d *deviceCounts) add(device string) { d.take(device, 0) }

// done counts one request of device less. A device with none counted (a job
// queued without ReserveFor, as some tests queue them) is left alone.
func (d *deviceCounts) done(device string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch n := d.n[device]; {
	case n > 1:
		d.n[device] = n - 1
	case n == 1:
		delete(d.n, device)
	}
}

// queued is how many requests device has queued.
func (d *deviceCounts) queued(device string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n[device]
}
