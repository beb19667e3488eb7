package scheduler

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// The peek: sneakpeek with a forward pass as its per-sample signal.
//
// The estimator and the difficulty model are cheap enough to run on every
// request at admission, but on an application whose strong variants are close
// (fashion's cnn and resnet-s) they cannot tell which few inputs a stronger
// variant would answer differently; the mid-sized variant's own output can (the
// cascade's first pass, docs/evaluation-log.md "The cascade's first variant"). With
// a peek configured for an application (Options.Peek, the gateway's
// scheduler.peek), sneakpeek keeps its search, price of engine time, shedding
// and degraded answers, and adds one decision: a batch it runs on the peek
// variant is a first pass (Batch.EscalateBelow), whose answers below a
// confidence threshold come back to the queue with their first result. The
// threshold is where the validation split's gain from a second opinion on the
// most accurate variant stops paying for that variant's engine time at the
// decision's price. A request that comes back is valued by that gain: the search
// runs it on the most accurate variant, or it is answered with its first pass
// (FirstAnswer) when the gain no longer pays at the price, when its deadline no
// longer allows a second pass, or when it is shed.
//
// The gain as a function of the first pass's confidence is the upper concave
// hull of the application's cascade curve (CascadeConfig, measured on the
// validation split as for the cascade policy): the slope of the hull segment a
// confidence falls in is the mean utility a second opinion adds to a request
// there. The hull makes the gain fall as the confidence rises, so the threshold
// at a price and the per-request test agree.

// PeekConfigurer is implemented by the searching policies: it sets (or
// replaces) one application's peek from its cascade curve, whose Cheap variant
// is the peek and Better the second opinion. Only a data-aware policy
// (sneakpeek) peeks; the others ignore it. Like Decide, it must not run
// concurrently with other calls.
type PeekConfigurer interface {
	ConfigurePeek(app string, c CascadeConfig)
}

// PeekPair returns the variants of a's peek: the first pass's (o.Peek's
// variant for a) and the most accurate variant's. It fails when o.Peek names a
// variant a does not have, or when a has no peek.
func PeekPair(a *App, o Options) (peek, better int, err error) {
	name, ok := o.Peek[a.Name]
	if !ok {
		return 0, 0, fmt.Errorf("scheduler: no peek for app %s", a.Name)
	}
	peek, better, err = CascadePair(a, Options{CascadeFirst: map[string]string{a.Name: name}})
	if err != nil {
		return 0, 0, fmt.Errorf("scheduler: peek variant: app %s has no variant %q", a.Name, name)
	}
	return peek, better, nil
}

// ReasonSecondNotWorth: a request back from its first pass (the peek) is
// answered with it because a second opinion is no longer worth its engine time
// at the price, or can no longer be on time.
const ReasonSecondNotWorth = "second_pass_not_worth"

// peekInfo is one application's peek.
type peekInfo struct {
	cfg CascadeConfig
	// hull is the upper concave hull of cfg.Curve (its first point escalates
	// nothing); slope[k] is the gain per escalated request of the segment
	// ending at hull[k] (slope[0] unused); at[k] is hull[k]'s index in
	// cfg.Curve.
	hull  []CascadePoint
	slope []float64
	at    []int
	// sent is a running mean (weight peekSentWeight per request) of the share
	// of the first passes run that their own class estimates say escalating
	// sends back, at the point each batch escalated at (escalate); sentN
	// counts them. Once there are any it is the share the second opinions are
	// priced at (peekOption).
	sent  float64
	sentN int
}

// peekSentWeight is the weight of one first pass in peekInfo.sent: about the
// last 50 count.
const peekSentWeight = 0.02

func newPeekInfo(c CascadeConfig) *peekInfo {
	pk := &peekInfo{cfg: c}
	for j, p := range c.Curve {
		for len(pk.hull) >= 2 {
			a, b := pk.hull[len(pk.hull)-2], pk.hull[len(pk.hull)-1]
			// b is under the chord from a to p: not on the upper hull.
			if (b.Utility-a.Utility)*(p.Escalated-a.Escalated) <= (p.Utility-a.Utility)*(b.Escalated-a.Escalated) {
				pk.hull, pk.at = pk.hull[:len(pk.hull)-1], pk.at[:len(pk.at)-1]
				continue
			}
			break
		}
		if len(pk.hull) == 1 && p.Escalated <= pk.hull[0].Escalated {
			continue
		}
		pk.hull, pk.at = append(pk.hull, p), append(pk.at, j)
	}
	pk.slope = make([]float64, len(pk.hull))
	for k := 1; k < len(pk.hull); k++ {
		a, b := pk.hull[k-1], pk.hull[k]
		pk.slope[k] = (b.Utility - a.Utility) / (b.Escalated - a.Escalated)
	}
	return pk
}

// on reports whether the peek can escalate at all.
func (pk *peekInfo) on() bool {
	return pk != nil && pk.cfg.Cheap != pk.cfg.Better && len(pk.hull) >= 2
}

// point is the index of the hull's point a first pass escalates to at price
// when a second opinion costs amort seconds (0: none).
func (pk *peekInfo) point(price, amort float64) int {
	k := 0
	for k+1 < len(pk.hull) && pk.slope[k+1] >= price*amort {
		k++
	}
	return k
}

// threshold is the first pass's EscalateBelow at price (utility per engine
// second) when a second opinion costs amort seconds: the hull's last point
// whose segment's gain per request pays amort at the price; 0 (escalate
// nothing) when not even the first does.
func (pk *peekInfo) threshold(price, amort float64) float64 {
	if !pk.on() {
		return 0
	}
	k := pk.point(price, amort)
	if k == 0 {
		return 0
	}
	return pk.hull[k].Threshold
}

// gain is the mean utility a second opinion adds to a first answer of
// confidence conf: the slope of the hull segment conf falls in (the first
// segment's below the curve, 0 beyond its last threshold).
func (pk *peekInfo) gain(conf float64) float64 {
	if !pk.on() {
		return 0
	}
	for k := 1; k < len(pk.hull); k++ {
		if conf < pk.hull[k].Threshold {
			return pk.slope[k]
		}
	}
	return 0
}

// peekOption prices a's peek for this decision into ai: a request run on the
// peek variant also gets, on average, the second opinions its first pass
// escalates at the peek price (the hull's point; peekSmoothing), which add their mean gain to
// its value (peekBonus) and their share of the better variant's time to the
// peek variant's amortised time, so that the price and the search see what a
// first pass costs and buys.
func (d *decisionState) peekOption(a *App, ai *appInfo) {
	pk := d.peek[a.Name]
	if !pk.on() || !d.w.dataAware || pk.cfg.Cheap >= len(a.Variants) || pk.cfg.Better >= len(a.Variants) || !ai.ok0[pk.cfg.Better] {
		return
	}
	k := pk.point(d.peekPrice, ai.amort[pk.cfg.Better])
	if k == 0 {
		return
	}
	h := pk.hull[k]
	ai.peekVar, ai.peekBetter = pk.cfg.Cheap, pk.cfg.Better
	ai.peekBonus = h.Utility - pk.hull[0].Utility
	ai.peekClass = classRow(pk.cfg.ClassGain, pk.at[k], a.K)
	share := pk.sent
	if pk.sentN == 0 {
		share = d.escalatedShare(a, pk, k)
	}
	ai.amort[pk.cfg.Cheap] += share * ai.amort[pk.cfg.Better]
}

// classRow is rows[j] when it holds one value per class (k of them), nil
// otherwise: a cascade curve's per-class gains or escalated shares at its
// point j (CascadeConfig.ClassGain, ClassEscalated).
func classRow(rows [][]float64, j, k int) []float64 {
	if j < len(rows) && len(rows[j]) == k {
		return rows[j]
	}
	return nil
}

// escalatedShare is, until first passes have run (peekInfo.sent), the share of
// a's first passes that escalating at pk's hull point k sends back: under the
// class mix of a's recent arrivals (the mean of their class estimates,
// d.recent), sum_y mix(y) ClassEscalated[y], or the validation split's share
// (the point's Escalated) without per-class shares or recent arrivals. A workload heavy in the classes the peek variant is unsure
// of (fashion's tops) escalates more than the validation split (tops-heavy:
// 18% against 12% at one threshold), and the second opinions' time priced at
// the split's share let the peek take more first passes than the engine could
// follow up: late answers and requests refused at admission
// (docs/evaluation-log.md, "The peek's time").
func (d *decisionState) escalatedShare(a *App, pk *peekInfo, k int) float64 {
	esc := classRow(pk.cfg.ClassEscalated, pk.at[k], a.K)
	if esc == nil {
		return pk.hull[k].Escalated
	}
	e, n := 0.0, 0
	for _, r := range d.recent {
		if r.App != a || len(r.P) != a.K {
			continue
		}
		e += sneakpeek.ExpectedAccuracy(r.P, esc) // sum_y p(y) esc[y]
		n++
	}
	if n == 0 {
		return pk.hull[k].Escalated
	}
	return e / float64(n)
}

// withPeek is u with r's peek bonus on its application's peek variant (a copy
// in d.ubuf), or u itself without a peek. The bonus is what the second
// opinions add on average to requests like r, as sneakpeek values a variant:
// under r's class estimate, sum_y p(y) ClassGain[y] at the hull point of the
// last price (shrunk toward the mean gain by Options.Shrink, as variants'
// values are toward their profiled ones), or the mean gain without an
// estimate or per-class gains. (A bonus spread by the difficulty model's
// probability that the peek variant is wrong was measured: it sent the hard
// requests to the peek variant without the second opinions to match;
// docs/evaluation-log.md, "The peek".) It never lifts the peek variant to the
// better one's value, so the request's best value, which the shedding walk and
// the admission gate (PriceGate) rank it by, is unchanged, and with engine time
// free (price 0) a request whose bonus would cover the whole gap runs straight
// on the better variant: a tie went to the peek variant (the first on ties),
// which then gave up the answers the first pass was sure of and wrong about
// (fashion at loads 0.5-1: 0.0006-0.0010 below sneakpeek, beyond the interval;
// docs/evaluation-log.md, "The peek's time").
func (d *decisionState) withPeek(u []float64, ai *appInfo, r *Request) []float64 {
	if ai.peekBonus <= 0 || ai.peekVar >= len(u) || ai.peekBetter >= len(u) {
		return u
	}
	bonus := ai.peekBonus
	if len(ai.peekClass) > 0 && len(r.P) == len(ai.peekClass) {
		b := 0.0
		for y, py := range r.P {
			b += py * ai.peekClass[y]
		}
		bonus = shrinkTo(b, ai.peekBonus, d.shrink)
	}
	bonus = min(bonus, (u[ai.peekBetter]-u[ai.peekVar])*(1-peekTieMargin))
	if bonus <= 0 {
		return u
	}
	start := len(d.ubuf)
	d.ubuf = append(d.ubuf, u...)
	out := d.ubuf[start:len(d.ubuf):len(d.ubuf)]
	out[ai.peekVar] += bonus
	return out
}

// peekSmoothing is the weight of a decision's price in the price the peek is
// priced at (searching.peekPrice, an exponentially weighted mean over
// decisions). The peek's hull point is chosen at that price before the
// decision solves its own, and the point feeds the price: a low price puts
// many second opinions into the peek variant's time, which raises the next
// price, which puts few in, which lowers the one after. Taken straight from
// the last decision, the price alternated between two values from one
// decision to the next (fashion at 12x: 45.8, 6.9, 36.1, 7.2 per engine
// second), the search charged the cnn for second opinions the decision then
// did not escalate and moved requests to mlp-large, and the peek fell 0.020
// below plain sneakpeek (docs/evaluation-log.md, "The peek's time").
const peekSmoothing = 0.2

// peekTieMargin keeps the peek variant's value with its bonus strictly below
// the better variant's (withPeek).
const peekTieMargin = 1e-6

// firstDist is the class distribution of f's answer: the caller's copy when it
// kept one, otherwise its confidence on the answered class and the rest spread
// over the others by the prior (nil when f's class is not one of a's).
func firstDist(a *App, f *FirstPass) []float64 {
	y := f.Class
	if y < 0 || y >= a.K {
		return nil
	}
	if len(f.Probs) == a.K {
		return f.Probs
	}
	p := make([]float64, a.K)
	w := 0.0
	for t := range a.K {
		if t == y {
			continue
		}
		p[t] = 1.0 / float64(a.K)
		if len(a.Prior) == a.K {
			p[t] = a.Prior[t]
		}
		w += p[t]
	}
	for t := range p {
		if t != y && w > 0 {
			p[t] *= (1 - f.Confidence) / w
		}
	}
	p[y] = f.Confidence
	return p
}

// firstUtility is the expected utility of answering with f, and of giving its
// request no answer at all, under f's answer's distribution (firstDist).
func firstUtility(a *App, f *FirstPass) (answer, none float64) {
	p := firstDist(a, f)
	if p == nil || len(a.Utility) != a.K {
		return 0, a.ExpectedNoAnswer(nil)
	}
	for t, pt := range p {
		answer += pt * a.Utility[t][f.Class]
	}
	return answer, a.ExpectedNoAnswer(p)
}

// admitSecond is the prepass (admit) for a request back from its peek: its
// member, valued by the second opinion's gain over its first answer, or a
// FirstAnswer verdict (answered true).
func (d *decisionState) admitSecond(r *Request, m *member) (v Verdict, answered bool) {
	first := answerFirst(r)
	pk := d.peek[r.App.Name]
	if !pk.on() || pk.cfg.Better >= len(r.App.Variants) || len(r.ExpUtility) != len(r.App.Variants) {
		return first, true
	}
	ai := d.info(r.App)
	b := pk.cfg.Better
	dl := r.Deadline.Sub(d.s.Now)
	if !ai.ok0[b] || ai.cost0[b]+ai.lat1[b] > dl {
		return first, true
	}
	g := pk.gain(r.First.Confidence)
	if g <= 0 || g < d.peekPrice*ai.amort[b] {
		return first, true
	}
	alt, _ := firstUtility(r.App, r.First)
	start := len(d.ubuf)
	for range r.App.Variants {
		// Any other variant is worth less than the first answer: the search
		// never picks it, and assemble answers a member it would run there
		// with the first answer.
		d.ubuf = append(d.ubuf, alt-1)
	}
	u := d.ubuf[start:len(d.ubuf):len(d.ubuf)]
	u[b] = alt + g
	*m = member{r: r, dl: dl, budget: r.Budget(), u: u, na: alt, alt: alt, class: -1}
	m.pri = g / max(dl, ai.fastest).Seconds()
	return Verdict{}, false
}

// answerFirst is the verdict on r, which has a first pass and gets no second:
// its first pass's model answer (FirstAnswer), unless under that answer's own
// distribution no answer is worth more (a utility that charges for wrong
// answers): then Expired. (The estimate's degraded answer is not weighed
// against it: each would be valued under its own, differently calibrated
// distribution, and the model answer is what the device asked for.)
func answerFirst(r *Request) Verdict {
	v := Verdict{Request: r, Outcome: FirstAnswer, Reason: ReasonSecondNotWorth}
	if answer, none := firstUtility(r.App, r.First); none > answer {
		v.Outcome = Expired
	}
	return v
}

// firstAnswers makes every verdict on a request that has a first pass its
// answerFirst outcome (assemble answers a late member degraded or expired).
func firstAnswers(vs []Verdict) {
	for i := range vs {
		if r := vs[i].Request; r.First != nil {
			vs[i].Outcome = answerFirst(r).Outcome
		}
	}
}

// answerUnserved answers, with their first pass, the second passes (the
// members of decideSecond) that this decision leaves queued and that could no
// longer be run on time after its batch b: the gateway decides again only when
// b is done, and by then their first answers would be late.
func (d *decisionState) answerUnserved(b *Batch) {
	gone := make(map[*Request]bool, len(b.Requests)+len(d.verdicts))
	for _, r := range b.Requests {
		gone[r] = true
	}
	for _, v := range d.verdicts {
		gone[v.Request] = true
	}
	busy := b.Finish.Sub(d.s.Now)
	for i := range d.members {
		m := &d.members[i]
		if gone[m.r] {
			continue
		}
		// admitSecond made it a member: its application peeks.
		better := d.peek[m.r.App.Name].cfg.Better
		if ai := d.info(m.r.App); busy+ai.cost0[better]+ai.lat1[better] <= m.dl {
			continue
		}
		d.verdicts = append(d.verdicts, answerFirst(m.r))
	}
}

// escalate makes b a first pass when its variant is its application's peek
// (EscalateBelow at the decision's price).
func (d *decisionState) escalate(b *Batch) {
	if b == nil || len(b.Requests) == 0 {
		return
	}
	a := b.Requests[0].App
	pk := d.peek[a.Name]
	if !pk.on() || b.Variant.Index != pk.cfg.Cheap || pk.cfg.Better >= len(a.Variants) {
		return
	}
	better := d.info(a).amort[pk.cfg.Better]
	th := pk.threshold(d.price, better)
	if th > 0 && !math.IsInf(th, 0) && !math.IsNaN(th) {
		b.EscalateBelow = th
		pk.noteSent(a, pk.point(d.price, better), b.Requests)
	}
}

// noteSent accounts first passes rs escalating at hull point k in pk.sent:
// each request's own share, sum_y p(y) ClassEscalated[y] under its class
// estimate (requests without one, or a curve without per-class shares, are
// not counted). The price's share under the recent arrivals' mix
// (escalatedShare) is right when every request takes the peek, as with
// fashion's cnn; the search gives first passes to the requests the peek's
// bonus favours, the unsure ones, which escalate more: with lenet as
// fashion's peek, 0.35 priced and 0.55 sent back at load 5, and the second
// passes crowded the fresh requests out (docs/evaluation-log.md, "A cheaper peek
// variant collapsed").
func (pk *peekInfo) noteSent(a *App, k int, rs []*Request) {
	if k <= 0 {
		return
	}
	esc := classRow(pk.cfg.ClassEscalated, pk.at[k], a.K)
	if esc == nil {
		return
	}
	for _, r := range rs {
		if len(r.P) != a.K {
			continue
		}
		e := sneakpeek.ExpectedAccuracy(r.P, esc) // sum_y p(y) esc[y]
		if pk.sentN == 0 {
			pk.sent = e
		}
		pk.sentN++
		pk.sent += peekSentWeight * (e - pk.sent)
	}
}

// decideSecond is the decision's first stage when the policy peeks: the
// requests back from a first pass (First set) are decided before the others,
// as the cascade's second passes are. Each is answered with its first pass
// when a second opinion no longer pays at the peek price or cannot be on time
// (admitSecond); of the rest, those of the application whose earliest is due
// first run now on its better variant, earliest deadline first, up to a
// batch, and any other that could no longer be on time after that batch is
// answered with its first pass (answerUnserved). A decision that answers or
// runs something is returned (done). Otherwise, and when nothing came back,
// it returns s without the requests that came back (fresh): the rest of the
// decision, the long-queue index included, sees only requests that have not
// had a first pass, in arrival order as it expects.
//
// Running second passes first is what made the second passes that pay at
// the price run at all: they were escalated because their gain pays for the
// better variant's time, and their deadlines are the nearest.
func (p *searching) decideSecond(s *Snapshot) (dec Decision, fresh *Snapshot, done bool) {
	n := 0
	for _, r := range s.Queue {
		if r.First != nil {
			n++
		}
	}
	if n == 0 {
		return Decision{}, s, false
	}
	clear(p.freshBuf)
	q := p.freshBuf[:0]
	d := newDecisionState(s, p.w, p.o.MaxBatch)
	d.peek, d.peekPrice, d.shrink = p.peek, p.peekPrice, p.o.Shrink
	d.members = make([]member, 0, n)
	// slack is the least time any fresh request that can still be served in
	// time can wait before its fastest variant must start (-1: none can).
	slack := time.Duration(-1)
	for _, r := range s.Queue {
		if r.First == nil {
			q = append(q, r)
			if sl := r.Deadline.Sub(s.Now) - d.info(r.App).fastest; sl > 0 && (slack < 0 || sl < slack) {
				slack = sl
			}
			continue
		}
		d.members = append(d.members, member{})
		if v, answered := d.admitSecond(r, &d.members[len(d.members)-1]); answered {
			d.members = d.members[:len(d.members)-1]
			d.verdicts = append(d.verdicts, v)
		}
	}
	p.freshBuf = q
	var b *Batch
	if len(d.members) > 0 {
		// The application whose earliest second pass is due first.
		first := &d.members[0]
		for i := range d.members {
			if d.members[i].dl < first.dl {
				first = &d.members[i]
			}
		}
		a := first.r.App
		pk := d.peek[a.Name]
		v := a.Variants[pk.cfg.Better]
		var ms []*member
		for i := range d.members {
			if d.members[i].r.App == a {
				ms = append(ms, &d.members[i])
			}
		}
		slices.SortStableFunc(ms, func(x, y *member) int { return cmp.Compare(x.dl, y.dl) })
		ms = ms[:min(len(ms), d.capOf(v))]
		// No longer than the most urgent fresh request can wait (at least
		// one second pass): a full batch on the better variant held the
		// engine past the deadlines of the fresh requests queued behind it
		// (fashion tops-heavy at load 5, resnet-m: 16 second passes, 33 ms
		// of a 50 ms budget), and the decisions after it shed them.
		if slack >= 0 {
			c := d.info(a).cost0[v.Index]
			k := len(ms)
			for k > 1 && c+v.LatencyAt(k) > slack {
				k--
			}
			ms = ms[:k]
		}
		if b = d.assemble(run{ms: ms, vi: v.Index, v: v}); b != nil {
			d.answerUnserved(b)
		}
	}
	firstAnswers(d.verdicts)
	switch {
	case b != nil:
		return Decision{Verdicts: d.verdicts, Batch: b}, nil, true
	case len(d.verdicts) > 0:
		// Decide again at once: the fresh requests have not been looked at.
		return Decision{Verdicts: d.verdicts, WakeAt: s.Now}, nil, true
	}
	fs := *s
	fs.Queue = q
	return Decision{}, &fs, false
}
