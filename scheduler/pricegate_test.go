package scheduler

import "testing"

// TestPriceGate: a sneakpeek decision that sheds under overload sets a gate
// that sheds, at admission, an arrival worth less per engine second than what
// the walk shed (its estimate surer than theirs), and not one worth more, nor
// one without an estimate; the gate holds GateTTL. Policies that do not answer
// from the estimate set no gate, and a decision with time to spare sets none
// that sheds.
func TestPriceGate(t *testing.T) {
	a := testApp()
	var q []*Request
	for i := range 40 {
		p := []float64{0.5, 0.5}
		if i%2 == 0 {
			p = []float64{0.99, 0.01}
		}
		q = append(q, req(a, uint64(i), t0, ms(5), p))
	}
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(t0, a, q...))
	shed := 0
	for _, v := range d.Verdicts {
		if v.Reason == ReasonOverload {
			shed++
			if v.Request.P[0] != 0.99 {
				t.Fatalf("the walk shed an uncertain request before the sure ones: %v", v.Request.P)
			}
		}
	}
	if shed == 0 || shed >= 20 {
		t.Fatalf("the walk shed %d of 40, want some but not all of the 20 sure ones", shed)
	}
	g := d.Gate
	if g == nil || !g.Active || !g.At.Equal(t0) {
		t.Fatalf("gate of a decision that shed: %+v", g)
	}
	at := t0.Add(ms(1))
	surest := req(a, 100, at, ms(5), []float64{0.999, 0.001})
	if !g.Sheds(surest, at) {
		t.Error("an arrival surer than every request shed is not shed")
	}
	if g.Sheds(req(a, 101, at, ms(5), []float64{0.5, 0.5}), at) {
		t.Error("an uncertain arrival, worth more than what was shed, is shed")
	}
	if g.Sheds(req(a, 102, at, ms(5), []float64{0.99, 0.01}), at) {
		t.Error("an arrival worth exactly what the walk shed last is shed (the walk would keep it first)")
	}
	if g.Sheds(req(a, 103, at, ms(5), nil), at) {
		t.Error("an arrival without an estimate is shed")
	}
	if late := t0.Add(GateTTL + 1); g.Sheds(req(a, 104, late, ms(5), []float64{0.999, 0.001}), late) {
		t.Error("a gate older than GateTTL sheds")
	}
	other := testApp() // another version of the application: unknown to the gate
	if g.Sheds(req(other, 105, at, ms(5), []float64{0.999, 0.001}), at) {
		t.Error("the gate sheds for an application version it does not know")
	}
	var none *PriceGate
	if none.Sheds(surest, at) {
		t.Error("a nil gate sheds")
	}

	for _, name := range []string{"edf", "oblivious", "fixed-batch", "sneakpeek-nodegrade"} {
		if d := mustPolicy(t, name, Options{}).Decide(snap(t0, a, q...)); d.Gate != nil {
			t.Errorf("%s set a gate: %+v", name, d.Gate)
		}
	}
	if d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(t0, a, q[:10]...)); d.Gate != nil && d.Gate.Sheds(surest, at) {
		t.Errorf("a decision with time to spare set a gate that sheds: %+v", d.Gate)
	}
}
