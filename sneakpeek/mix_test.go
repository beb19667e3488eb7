package sneakpeek

import (
	"errors"
	"math"
	"testing"
)

// vadUtility is the vad application's utility matrix: a missed speech window
// costs 1, a false alarm 0.1.
var vadUtility = [][]float64{{1, -0.1}, {-1, 1}}

// fourRows is an AnswerValue over two silence and two speech rows, one of each
// estimated wrong.
func fourRows(t *testing.T) *AnswerValue {
	t.Helper()
	a, err := NewAnswerValue([]int{0, 0, 1, 1}, [][]float64{{0.9, 0.1}, {0.4, 0.6}, {0.3, 0.7}, {0.6, 0.4}}, vadUtility)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAnswerValueByHand(t *testing.T) {
	// Two silence rows, two speech rows. Uncorrected, the estimate is right on
	// three of four: silence [0.9 0.1] right, silence [0.4 0.6] wrong (a false
	// alarm, -0.1), speech [0.3 0.7] right, speech [0.6 0.4] wrong (missed, -1).
	a := fourRows(t)
	one := []float64{1, 1}
	// Class means: silence (1 - 0.1)/2 = 0.45, speech (1 - 1)/2 = 0.
	if got, want := a.Value([]float64{0.5, 0.5}, one), 0.5*0.45+0.5*0; math.Abs(got-want) > 1e-12 {
		t.Errorf("balanced mix, no correction: %v, want %v", got, want)
	}
	if got, want := a.Value([]float64{0.2, 0.8}, one), 0.2*0.45; math.Abs(got-want) > 1e-12 {
		t.Errorf("speech-heavy mix, no correction: %v, want %v", got, want)
	}
	// A correction toward speech (ratio 1:2) turns [0.6 0.4] into speech (right)
	// and [0.9 0.1] stays silence: silence mean (1 - 0.1)/2, speech mean 1.
	if got, want := a.Value([]float64{0.2, 0.8}, []float64{1, 2}), 0.2*0.45+0.8*1; math.Abs(got-want) > 1e-12 {
		t.Errorf("speech-heavy mix, corrected: %v, want %v", got, want)
	}
}

func TestAnswerValueRefusesBadRows(t *testing.T) {
	for name, c := range map[string]struct {
		labels []int
		est    [][]float64
		w      [][]float64
	}{
		"no rows":          {nil, nil, vadUtility},
		"label out":        {[]int{2}, [][]float64{{0.5, 0.5}}, vadUtility},
		"short estimate":   {[]int{0}, [][]float64{{1}}, vadUtility},
		"counts differ":    {[]int{0, 1}, [][]float64{{0.5, 0.5}}, vadUtility},
		"ragged utility":   {[]int{0}, [][]float64{{0.5, 0.5}}, [][]float64{{1, 0}, {1}}},
		"one-class matrix": {[]int{0}, [][]float64{{1}}, [][]float64{{1}}},
	} {
		if _, err := NewAnswerValue(c.labels, c.est, c.w); !errors.Is(err, ErrParams) {
			t.Errorf("%s: %v, want ErrParams", name, err)
		}
	}
}

// TestPriorShiftPublishesMixes checks the Mix a PriorShift publishes: the
// training prior at first, the live prior after each MixRefresh corrections
// (not between), valued by its AnswerValue, and the training prior again after
// Reset, although the Mix before it was taken at a later correction count.
func TestPriorShiftPublishesMixes(t *testing.T) {
	av := fourRows(t)
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{Window: 10, Answers: av})
	m0 := s.Mix()
	if m0 == nil || m0.Prior[0] != 0.5 || math.Abs(m0.Answer-av.Value([]float64{0.5, 0.5}, []float64{1, 1})) > 1e-12 {
		t.Fatalf("first Mix %+v", m0)
	}
	dst := make([]float64, 2)
	for range MixRefresh - 1 {
		s.Correct([]float64{0.2, 0.8}, dst)
	}
	if s.Mix() != m0 {
		t.Fatalf("a Mix published after %d corrections, want one every %d", MixRefresh-1, MixRefresh)
	}
	s.Correct([]float64{0.2, 0.8}, dst)
	m1 := s.Mix()
	live := s.Prior()
	if m1 == m0 || math.Abs(m1.Prior[1]-live[1]) > 1e-12 || !(m1.Prior[1] > 0.7) {
		t.Fatalf("after %d speech-heavy estimates: Mix prior %v, live prior %v", MixRefresh, m1.Prior, live)
	}
	ratio := []float64{live[0] / 0.5, live[1] / 0.5}
	if want := av.Value(live, ratio); math.Abs(m1.Answer-want) > 1e-12 {
		t.Errorf("Mix answer %v, want %v", m1.Answer, want)
	}
	s.Reset()
	if m := s.Mix(); m.Prior[0] != 0.5 || m.Prior[1] != 0.5 {
		t.Errorf("after Reset: Mix prior %v, want the training prior", m.Prior)
	}

	plain := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{})
	if m := plain.Mix(); m == nil || !math.IsNaN(m.Answer) {
		t.Errorf("without an AnswerValue: Mix %+v, want its Answer NaN", m)
	}
}

// Two snapshots published out of order (two Corrects racing): the later one
// stays the latest Mix.
func TestPriorShiftKeepsTheLaterMix(t *testing.T) {
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{})
	s.mu.Lock()
	older, newer := s.newMix(), s.newMix()
	s.mu.Unlock()
	newer.prior[0] = 0.9
	s.publish(newer)
	s.publish(older)
	if got := s.Mix(); got.Prior[0] != 0.9 {
		t.Errorf("after publishing the older snapshot last: Mix prior %v, want the newer one's", got.Prior)
	}
}
