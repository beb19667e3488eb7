package gateway

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sneakgate/sneakgate/store"
)

// The crash guard keeps one input that crashes the process from stopping the
// gateway for good. Every request the gateway acknowledged is in the journal
// and runs again after a restart, so an input on which a model takes the
// process down (a crash inside ONNX Runtime, a forward pass the systemd
// watchdog kills, a batch that makes the kernel's OOM killer step in) would
// take it down again at every start until its deadline passed, and no other
// request would be answered meanwhile.
//
// Before each forward pass the engine worker writes the keys of the batch's
// requests (a 64-bit hash each) to a small file beside the journal, mapped
// into memory so that the write is a memory store, not a system call; after the
// pass it writes an empty batch. A process that dies, however it dies, leaves
// the last write in the kernel's page cache, so the next start reads which
// batch was running: each of its requests still pending is a suspect. The
// suspects are written to a second file (fsynced: one write per start after a
// crash, not per batch) with how many crashes each was in. A suspect runs
// alone, so that the requests batched with it are not blamed again; one that
// was running when the process died a second time is answered error,
// reason engine_crashed, without running. A crash of the whole machine may
// lose the last write or keep an older one; at worst an innocent request then
// runs alone once.

const (
	crashMagic  = "SGCRASH1"
	crashHeader = 16 // magic, n (uint32), crc32c (uint32)
	// crashLimit is the crashes a request may be in before it is answered
	// error instead of run again: the first may be its batch-mates', the
	// second, alone, is its own.
	crashLimit = 2
)

var crashCRC = crc32.MakeTable(crc32.Castagnoli)

// keyHash is the 64-bit hash of a request key the in-flight file holds
// (FNV-1a over app, device and id, each followed by a zero byte; no
// allocation).
func keyHash(k store.Key) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for _, s := range [3]string{k.App, k.Device, k.ID} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * prime
		}
		h *= prime // the zero byte
	}
	return h
}

// crashGuard is the in-flight file of a running gateway. A nil guard records
// nothing (unit tests of the loop).
type crashGuard struct {
	f   *os.File
	mem []byte // the file's mapping (or a buffer written with WriteAt: crashguard_other.go)
	max int    // the most keys a record holds
}

// mapInflight maps the in-flight file (a test wraps it).
var mapInflight = mapFile

// inflightPath and suspectsPath are the guard's files beside the journal.
func inflightPath(journal string) string { return journal + ".inflight" }
func suspectsPath(journal string) string { return journal + ".suspects.json" }

// readInflight returns the keys of the batch recorded in the in-flight file
// at path (none when there is no file, or it records no batch). A record that
// fails its checksum is an error: the caller logs it and treats it as none.
func readInflight(path string) ([]uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || len(b) == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < crashHeader || string(b[:8]) != crashMagic {
		return nil, fmt.Errorf("%s: not an in-flight file", path)
	}
	n := int(binary.LittleEndian.Uint32(b[8:12]))
	if n > (len(b)-crashHeader)/8 {
		return nil, fmt.Errorf("%s: records %d keys in %d bytes", path, n, len(b))
	}
	body := b[crashHeader : crashHeader+8*n]
	if crc := crc32.Checksum(b[8:12], crashCRC); crc32.Update(crc, crashCRC, body) != binary.LittleEndian.Uint32(b[12:16]) {
		return nil, fmt.Errorf("%s: checksum mismatch", path)
	}
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = binary.LittleEndian.Uint64(body[8*i:])
	}
	return keys, nil
}

// openCrashGuard creates (or truncates) the in-flight file at path, sized for
// batches of up to max requests, and records no batch. The file is written
// (magic, an empty record, zeros) before it is mapped, so that it has its
// blocks: a store into a mapped hole that the file system cannot back (a full
// disk or tmpfs) is a SIGBUS, which would kill the process at every start
// while the disk is full; written, a full disk is an error here instead.
func openCrashGuard(path string, max int) (*crashGuard, error) {
	size := crashHeader + 8*max
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	init := make([]byte, size)
	copy(init, crashMagic)
	binary.LittleEndian.PutUint32(init[12:16], crc32.Checksum(init[8:12], crashCRC)) // no batch
	if _, err := f.WriteAt(init, 0); err != nil {
		f.Close()
		return nil, err
	}
	mem, err := mapInflight(f, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	g := &crashGuard{f: f, mem: mem, max: max}
	copy(g.mem, crashMagic) // (the buffer of crashguard_other.go starts empty)
	g.record(nil)
	return g, nil
}

// running records that a forward pass over the requests with these key
// hashes is about to start; done that it ended.
func (g *crashGuard) running(keys []uint64) {
	if g == nil {
		return
	}
	if len(keys) > g.max {
		keys = keys[:g.max] // cannot happen: batches are at most max; blame the first
	}
	g.record(keys)
}

func (g *crashGuard) done() {
	if g != nil {
		g.record(nil)
	}
}

// record writes the keys, then the checksum and the count.
func (g *crashGuard) record(keys []uint64) {
	body := g.mem[crashHeader : crashHeader+8*len(keys)]
	for i, k := range keys {
		binary.LittleEndian.PutUint64(body[8*i:], k)
	}
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(keys)))
	crc := crc32.Update(crc32.Checksum(n[:], crashCRC), crashCRC, body)
	binary.LittleEndian.PutUint32(g.mem[12:16], crc)
	copy(g.mem[8:12], n[:])
	g.flush(crashHeader + 8*len(keys))
}

// close unmaps and closes the file and removes it: a gateway that stops
// cleanly leaves no batch behind.
func (g *crashGuard) close() error {
	if g == nil {
		return nil
	}
	err := unmapFile(g.mem)
	g.mem = nil
	if cerr := g.f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(g.f.Name()); err == nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	return err
}

// suspect is a pending request that was in a forward pass while the process
// died, and how many times.
type suspect struct {
	App     string `json:"app"`
	Device  string `json:"device"`
	ID      string `json:"id"`
	Crashes int    `json:"crashes"`
}

type suspectsFile struct {
	V        int       `json:"v"`
	Requests []suspect `json:"requests"`
}

// readSuspects reads the suspects file at path (none when there is none).
func readSuspects(path string) (map[store.Key]int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[store.Key]int{}, nil
	}
	if err != nil {
		return nil, err
	}
	var f suspectsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.V != 1 {
		return nil, fmt.Errorf("%s: version %d, want 1", path, f.V)
	}
	out := make(map[store.Key]int, len(f.Requests))
	for _, s := range f.Requests {
		if s.Crashes > 0 {
			out[store.Key{App: s.App, Device: s.Device, ID: s.ID}] = s.Crashes
		}
	}
	return out, nil
}

// writeSuspects replaces the suspects file at path with s (removes it when s
// is empty), durably: write, fsync, rename, fsync the directory.
func writeSuspects(path string, s map[store.Key]int) error {
	if len(s) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	f := suspectsFile{V: 1}
	for k, n := range s {
		f.Requests = append(f.Requests, suspect{App: k.App, Device: k.Device, ID: k.ID, Crashes: n})
	}
	slices.SortFunc(f.Requests, func(a, b suspect) int {
		return cmp.Or(strings.Compare(a.App, b.App), strings.Compare(a.Device, b.Device), strings.Compare(a.ID, b.ID))
	})
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return replaceFile(path, append(b, '\n'))
}

// replaceFile replaces path with b durably: a fsynced temporary file renamed
// over it, then the directory fsynced.
func replaceFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, b); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// crashVerdicts folds the batch the in-flight file recorded (inflight, key
// hashes) into the suspects of the last start (prev) for the pending requests
// keys: it returns every pending request's crash count (only those above 0),
// which the caller writes back as the new suspects file. Suspects no longer
// pending (answered since, or expired) are dropped.
func crashVerdicts(keys []store.Key, inflight []uint64, prev map[store.Key]int) map[store.Key]int {
	running := make(map[uint64]bool, len(inflight))
	for _, h := range inflight {
		running[h] = true
	}
	out := map[store.Key]int{}
	for _, k := range keys {
		n := prev[k]
		if running[keyHash(k)] {
			n++
		}
		if n > 0 {
			out[k] = n
		}
	}
	return out
}

// crashCheck reads what the last run left in the in-flight file and the
// suspects file, marks each recovered request that was in a forward pass when
// a run died as a suspect (it runs alone) or, at crashLimit crashes, moves it
// to g.crashed (answered error once connected), writes the suspects back, and
// opens the in-flight file for this run with room for batches of maxBatch. It
// never fails the start: an unreadable file is logged and taken as empty, and
// without an in-flight file, or when the suspects cannot be written, the
// gateway runs unguarded (logged; suspects still run alone).
func (g *Gateway) crashCheck(maxBatch int) {
	path := g.cfg.Store.Path
	log := g.log.With().Str("component", "crashguard").Logger()
	inflight, err := readInflight(inflightPath(path))
	if err != nil {
		log.Error().Err(err).Msg("the in-flight file cannot be read: taking it as no batch running when the last run stopped")
	}
	prev, err := readSuspects(suspectsPath(path))
	if err != nil {
		log.Error().Err(err).Msg("the suspects file cannot be read: taking it as none")
	}
	keys := make([]store.Key, len(g.recovered))
	for i, j := range g.recovered {
		keys[i] = store.Key{App: j.App, Device: j.Device, ID: j.ID}
	}
	verdicts := crashVerdicts(keys, inflight, prev)
	if len(inflight) > 0 {
		log.Warn().Int("batch", len(inflight)).Int("pending_suspects", len(verdicts)).
			Msg("the last run stopped during a forward pass (a crash, a kill, or the watchdog): the requests of that pass still pending run alone, and one that was in such a pass before is answered error (engine_crashed)")
	}
	kept := g.recovered[:0]
	alone := 0
	for i, j := range g.recovered {
		n := verdicts[keys[i]]
		switch {
		case n >= crashLimit:
			g.crashed = append(g.crashed, j)
			log.Error().Str("app", j.App).Str("device", j.Device).Str("id", j.ID).Int("crashes", n).
				Msg("request in a forward pass at two deaths of the process, the last alone: answered error (engine_crashed), not run again")
			continue
		case n > 0:
			j.suspect = true
			alone++
		}
		kept = append(kept, j)
	}
	g.recovered = kept
	g.m.crashSuspects.WithLabelValues("alone").Set(float64(alone))
	g.m.crashSuspects.WithLabelValues("answered").Set(float64(len(g.crashed)))
	if err := writeSuspects(suspectsPath(path), verdicts); err != nil {
		// The in-flight file is left as it is, and this run does not record
		// its passes: the next start that can write the suspects counts the
		// last run's pass then, once. Truncated, that crash would be
		// forgotten, and a request that crashed the process alone would run
		// alone again at every start.
		log.Error().Err(err).Msg("the suspects file cannot be written: running without the crash guard, the suspects found alone all the same; the next start counts this crash again (a request that crashes the process in this run is not counted)")
		return
	}
	if g.guard, err = openCrashGuard(inflightPath(path), maxBatch); err != nil {
		log.Error().Err(err).Msg("the in-flight file cannot be opened: running without the crash guard (a request that crashes the process will be run again at every start until its deadline)")
		g.guard = nil
	}
}
