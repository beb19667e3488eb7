package gateway

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestEmbeddedBrokerAcksUnderLoad: devices with many requests in flight, a
// gateway's client that acknowledges each after a random delay and publishes a
// QoS 1 reply to its device first (so that its own packet ids run across the
// requests' in flight): every request's PUBACK reaches its device.
func TestEmbeddedBrokerAcksUnderLoad(t *testing.T) {
	const filter = "sg/req/+/+"
	const devices, each = 8, 1000
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	gw, gwGot := holdClient(t, b, "sneakgate", filter)
	var answered atomic.Int64
	go func() {
		var wg sync.WaitGroup
		for m := range gwGot {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				dev := m.Topic()[len("sg/req/fashion/"):]
				gw.Publish("sg/res/"+dev, 1, false, m.Payload()).Wait()
				m.Ack()
				answered.Add(1)
			}()
		}
	}()
	var toks [devices][]mqtt.Token
	var wg sync.WaitGroup
	for d := range devices {
		id := fmt.Sprintf("cam-%02d", d)
		dev, _ := holdClient(t, b, id, "sg/res/"+id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				toks[d] = append(toks[d], dev.Publish("sg/req/fashion/"+id, 1, false, fmt.Sprint(i)))
			}
		}()
	}
	wg.Wait()
	missing := 0
	for d := range devices {
		for i, tok := range toks[d] {
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				if missing < 10 {
					t.Errorf("cam-%02d request %d: no PUBACK within 30 s (%v)", d, i, tok.Error())
				}
				missing++
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d requests without PUBACK; gateway answered %d; written %d withheld %d ambiguous %d",
			missing, devices*each, answered.Load(), b.hold.written.Load(), b.hold.withheld.Load(), b.hold.ambiguous.Load())
	}
}
