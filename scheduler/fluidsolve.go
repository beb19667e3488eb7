package scheduler

import "math"

// The price's bisection without most of its evaluations.
//
// solvePrice's bisection (a doubling phase from 1, then 40 halvings) compares
// use(mid) with the target at some 45 prices, each a pass over every member's
// variants. Its result, the bracket [lo, hi], is fixed by those comparisons'
// outcomes alone. use is piecewise constant and non-increasing in exact
// arithmetic: each member's preferred variant changes only at the vertices of
// the upper envelope of its lines u - p*a (and its alternative's, alt - p*0),
// where its time drops. bisect finds, from those vertices, the vertex p* at
// which the total use crosses the target and the use just before and just
// after it, and then runs the same bisection, with the same arithmetic on the
// same mids, evaluating use only at the mids whose outcome those do not
// settle: the few within a relative distance rho of p*, and any where rounding
// could put the evaluated use on the other side of the target. From the second
// mid near p* on, it evaluates only the members with a vertex near the bracket
// (zone, zoneOver) and adds the others' fixed times. The bracket is the
// bisection's to the bit (TestBisectIsTheBisection).
//
// Why a mid's outcome is certain. use(p) adds up, in member order and in
// floating point, the time of each member's variant chosen by comparing
// rounded values x_j = u_j - p*a_j (each within g/2 = 2^-52 (|u_j| + p a_j) of
// the exact value) with each other and with alt. The chosen line is within g of
// the exact envelope X at p. X is convex with slope -c(p), c the exact time
// of the member's choice, non-increasing in p, so a line within g of X at p has
// a time within g/R of [c(p+R), c(p-R)] for any R > 0 (compare the line and X
// at p-R and p+R). With R >= 4g/gap, gap the smallest difference between
// distinct times among the member's variants and 0 (alt), the chosen time lies
// in [c(p+R), c(p-R)] itself. Hence the exact sum of the chosen times lies
// between use(p+R) and use(p-R) (exact), with R = rho*p for every member, and
// a mid with mid*(1+rho) <= p* has use >= use(p*-) (exact), one with
// mid*(1-rho) >= p* has use <= use(p*+). The outcome is certain when those
// levels clear the target by more than the rounding of the sums (the
// evaluation's and the levels' own). Everything else, and any problem with a
// non-finite or negative number, is evaluated.

// fluidEvent is a vertex of member k's envelope: at price p its time drops by
// d, to a.
type fluidEvent struct {
	p, d, a float64
	k       int32
}

// fluidCert is what settles a mid's outcome without evaluating use.
type fluidCert struct {
	ok bool
	// pStar is the vertex where the exact use crosses the target; overOK and
	// fitOK say whether the use just before it is surely over the target and
	// the use just after it surely within it.
	pStar         float64
	overOK, fitOK bool
	// m1 and m2 give the relative radius rho(p) = 2^-48 (m1/p + m2) + 2^-44
	// (the last term for the vertices' own rounding).
	m1, m2 float64
}

// bisect is solvePrice's bisection on fl against target: the same bracket
// [lo, hi], to the bit; 0, 0 when use(0) fits the target (time is free).
func (fl *fluidSet) bisect(target float64) (float64, float64) {
	if fl.use(0) <= target {
		return 0, 0
	}
	c := fl.certify(target)
	zoned, nearly := false, false
	over := func(p, lo, hi float64) bool {
		if c.ok {
			rho := 0x1p-48*(c.m1/p+c.m2) + 0x1p-44
			if rho < 0.25 {
				if c.overOK && p*(1+rho) < c.pStar {
					return true
				}
				if c.fitOK && p*(1-rho) > c.pStar {
					return false
				}
			}
		}
		// The first uncertain mid near p* is evaluated; from the second on,
		// only the members whose choice may change.
		if !zoned && lo > 0 && hi-lo <= hi*0x1p-12 {
			if nearly && c.ok {
				fl.zone(lo, hi, &c)
				zoned = true
			}
			nearly = true
		}
		if zoned && fl.zoneLo <= p && p <= fl.zoneHi {
			fl.zoneEvals++
			return fl.zoneOver(p, target)
		}
		fl.evals++
		return fl.use(p) > target
	}
	lo, hi := 0.0, 1.0
	for k := 0; over(hi, lo, hi) && k < 60; k++ {
		lo, hi = hi, hi*2
	}
	for range 40 {
		mid := (lo + hi) / 2
		if over(mid, lo, hi) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, hi
}

// zone prepares zoneOver for prices in [zl, zh]: the members with an
// envelope vertex in the zone widened by rho (the certificate's, at zl) are
// live; every other member's time there is its envelope's (fl.contrib), to
// the bit: by the argument above, use's choice for it at p has a time in
// [c(p+R), c(p-R)], which is c's constant value when no vertex lies within
// R = rho*p of p. The certificate must be ok (all numbers finite).
func (fl *fluidSet) zone(zl, zh float64, c *fluidCert) {
	fl.zoneLo, fl.zoneHi, fl.zoneFixed = zl, zh, 0
	rho := 0x1p-48*(c.m1/zl+c.m2) + 0x1p-44
	wl, wh := zl*(1-2*rho), zh*(1+2*rho)
	// The time of each member after its last vertex below the zone: the
	// vertices below it in any order, the latest per member kept.
	fl.at = append(fl.at[:0], make([]float64, len(fl.alt))...)
	fl.live = fl.live[:0]
	for _, e := range fl.ev {
		switch {
		case e.p < wl:
			// A member's later vertex has the lower time (two may share a
			// price after certify's clamping).
			if at := fl.at[e.k]; e.p > at || e.p == at && e.a < fl.contrib[e.k] {
				fl.at[e.k], fl.contrib[e.k] = e.p, e.a
			}
		case e.p <= wh:
			fl.live = append(fl.live, e.k)
		}
	}
	for _, k := range fl.live {
		fl.at[k] = -1 // marked live
	}
	for k, x := range fl.contrib {
		if fl.at[k] >= 0 {
			fl.zoneFixed += x
		}
	}
	// Each live member once (a member may have several vertices in the zone).
	n := 0
	for _, k := range fl.live {
		if fl.at[k] == -1 {
			fl.at[k] = -2
			fl.live[n] = k
			n++
		}
	}
	fl.live = fl.live[:n]
}

// zoneOver is use(p) > target for p in the zone zone prepared: the live
// members' times are chosen as use chooses them, and their sum with the
// others' (zoneFixed) decides unless it is within rounding of the target; then
// the times are added up as use adds them (the same times in the same order).
func (fl *fluidSet) zoneOver(p, target float64) bool {
	t := fl.zoneFixed
	for _, k := range fl.live {
		_, a := fl.pick(int(k), p)
		fl.contrib[k] = a
		t += a
	}
	// use's sum and this one (and zoneFixed) each within n 2^-53 of the
	// exact sum; four times that.
	if e := 4 * float64(len(fl.contrib)+8) * 0x1p-53 * (t + target); t-e > target {
		return true
	} else if t+e < target {
		return false
	}
	fl.zoneSums++
	t = 0
	for _, c := range fl.contrib {
		t += c
	}
	return t > target
}

// certify lays out the members' envelope vertices (in fl.ev) and finds p*
// and the levels around it; ok is false when nothing may be settled without
// evaluating.
func (fl *fluidSet) certify(target float64) fluidCert {
	var c fluidCert
	fl.ev = fl.ev[:0]
	if !(target > 0) || math.IsInf(target, 0) {
		return c
	}
	use0 := 0.0 // the exact use just above price 0 (rounded)
	// contrib[k] is member k's time just above price 0 (for zone).
	fl.contrib = append(fl.contrib[:0], make([]float64, len(fl.alt))...)
	members := 0
	// The times' checks and gap, kept from the last member with the same
	// times (members of one application have the same).
	var lastA []float64
	aMax, gap := 0.0, 0.0
	for k, alt := range fl.alt {
		lo, hi := int(fl.off[k]), int(fl.off[k+1])
		if lo == hi {
			continue // no variant: use adds nothing for it, at any price
		}
		if alt-alt != 0 {
			return c // NaN or infinite
		}
		members++
		as := fl.a[lo:hi]
		if !sameTimes(as, lastA) {
			lastA = as
			aMax, gap = 0, math.Inf(1)
			for j, a := range as {
				if !(a >= 0) || a-a != 0 {
					return c // negative, NaN or infinite
				}
				if a > aMax {
					aMax = a
				}
				if a > 0 && a < gap {
					gap = a
				}
				for _, b := range as[:j] {
					if g := math.Abs(a - b); g > 0 && g < gap {
						gap = g
					}
				}
			}
		}
		if aMax == 0 {
			continue // every choice takes no time
		}
		uMax := math.Abs(alt)
		for _, u := range fl.u[lo:hi] {
			if u-u != 0 {
				return c // NaN or infinite
			}
			if u := math.Abs(u); u > uMax {
				uMax = u
			}
		}
		if m1 := (uMax + 0x1p-1000) / gap; m1 > c.m1 {
			c.m1 = m1
		}
		if m2 := aMax / gap; m2 > c.m2 {
			c.m2 = m2
		}
		// The member's choice just above 0: the largest u, the smallest time
		// among those; alt if it is larger, or as large with a time.
		cur := lo
		for j := lo + 1; j < hi; j++ {
			if fl.u[j] > fl.u[cur] || fl.u[j] == fl.u[cur] && fl.a[j] < fl.a[cur] {
				cur = j
			}
		}
		if alt > fl.u[cur] || alt == fl.u[cur] && fl.a[cur] > 0 {
			continue // alt from the start: no time at any positive price
		}
		use0 += fl.a[cur]
		fl.contrib[k] = fl.a[cur]
		// Walk the envelope to the right: the next line is the one with less
		// time that meets the current one first (at the same price, the one
		// with the least time).
		prev := 0.0
		for fl.a[cur] > 0 {
			uc, ac := fl.u[cur], fl.a[cur]
			next, np, na := -1, (uc-alt)/ac, 0.0 // alt
			for j := lo; j < hi; j++ {
				a := fl.a[j]
				if a >= ac {
					continue
				}
				q := (uc - fl.u[j]) / (ac - a)
				if q < np || q == np && a < na {
					next, np, na = j, q, a
				}
			}
			np = max(np, prev)
			fl.ev = append(fl.ev, fluidEvent{np, ac - na, na, int32(k)})
			prev = np
			if next < 0 {
				break
			}
			cur = next
		}
	}
	// The vertex where the use crosses the target.
	need := use0 - target
	var before, at float64
	if need <= 0 {
		c.pStar, before, at = 0, math.Inf(1), use0
	} else {
		p, dBefore, dAt, found := selectCrossing(fl.ev, need)
		if !found {
			return c
		}
		c.pStar, before, at = p, use0-dBefore, use0-dAt
	}
	// Rounding: use's own sum, use0's, the drops' and their sums, each within
	// (terms) * 2^-53 * use0; four times that.
	e := 4 * float64(members+len(fl.ev)+8) * 0x1p-53 * use0
	c.overOK = before-e > target
	c.fitOK = at+e < target
	c.ok = true
	return c
}

// selectCrossing finds the smallest price p among ev such that the drops at
// prices <= p add up to need or more, by quickselect (ev is reordered), and
// returns the drops before p and up to p inclusive.
func selectCrossing(ev []fluidEvent, need float64) (p, dBefore, dAt float64, found bool) {
	acc := 0.0
	for len(ev) > 0 {
		n := len(ev)
		a, b, m := ev[0].p, ev[n/2].p, ev[n-1].p
		pivot := max(min(a, b), min(max(a, b), m)) // median of three
		lt, i, gt := 0, 0, n
		sL, sE := 0.0, 0.0
		for i < gt {
			switch x := ev[i]; {
			case x.p < pivot:
				sL += x.d
				ev[lt], ev[i] = ev[i], ev[lt]
				lt++
				i++
			case x.p > pivot:
				gt--
				ev[i], ev[gt] = ev[gt], ev[i]
			default:
				sE += x.d
				i++
			}
		}
		switch {
		case acc+sL >= need:
			ev = ev[:lt]
		case acc+sL+sE >= need:
			return pivot, acc + sL, acc + sL + sE, true
		default:
			acc += sL + sE
			ev = ev[gt:]
		}
	}
	return 0, acc, acc, false
}

// sameTimes reports whether a and b hold the same times.
func sameTimes(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i, x := range a {
		if x != b[i] {
			return false
		}
	}
	return true
}
