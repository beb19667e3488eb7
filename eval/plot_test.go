package eval

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The difference panel is drawn only for summaries paired with a reference,
// leaves off (and names) a policy far below it, and keeps the others.
func TestDiffPanel(t *testing.T) {
	var ss []Summary
	for _, load := range []float64{0.5, 2} {
		ss = append(ss,
			Summary{App: "a", Workload: "w", DeadlineMS: 10, Load: load, Policy: "sneakpeek", Seeds: 3, Utility: 0.9},
			Summary{App: "a", Workload: "w", DeadlineMS: 10, Load: load, Policy: "oblivious", Seeds: 3, Utility: 0.89,
				Reference: "sneakpeek", Diff: -0.01, DiffCI: 0.004},
			Summary{App: "a", Workload: "w", DeadlineMS: 10, Load: load, Policy: "fixed-batch", Seeds: 3, Utility: 0.5,
				Reference: "sneakpeek", Diff: -0.4 * load, DiffCI: 0.01})
	}
	p, err := diffPanel(policiesOf(ss), ss)
	if err != nil || p == nil {
		t.Fatalf("diffPanel: %v, %v", p, err)
	}
	if !strings.Contains(p.Title.Text, "minus sneakpeek") || !strings.Contains(p.Title.Text, "off the scale (> 0.05 below): fixed-batch") {
		t.Errorf("title %q", p.Title.Text)
	}
	unpaired := make([]Summary, len(ss))
	for i, s := range ss {
		s.Reference, s.Diff, s.DiffCI = "", 0, 0
		unpaired[i] = s
	}
	if p, err := diffPanel(policiesOf(unpaired), unpaired); err != nil || p != nil {
		t.Errorf("unpaired summaries drew a difference panel: %v, %v", p, err)
	}
	dir := t.TempDir()
	files, err := WritePlots(dir, ss)
	if err != nil || len(files) != 1 || filepath.Base(files[0]) != "a-w-10ms.png" {
		t.Fatalf("WritePlots: %v, %v", files, err)
	}
	if st, err := os.Stat(files[0]); err != nil || st.Size() == 0 {
		t.Errorf("%s: %v", files[0], err)
	}
}
