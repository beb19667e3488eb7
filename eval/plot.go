package eval

import (
	"cmp"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WritePlots writes two PNGs per (application, workload, deadline) into dir
// from the runs' summaries (Summarize's, or those a results file keeps):
// APP-WORKLOAD-Dms.png, three panels (mean utility with its 95% interval over
// seeds, accuracy, deadline-met ratio) against load, one line per policy, and
// where the summaries are paired with a reference policy a fourth, each other
// policy's utility minus the reference's with the paired 95% interval (the
// differences the tables print, on a scale where they show: a policy more
// than diffFloor below the reference anywhere is left off it and named in its
// title); and APP-WORKLOAD-Dms-classes.png, the recall of every true class
// against load (the requests of that class answered with it, by a model or
// the estimate), one panel per class, so that what overload costs each class
// is visible. It returns the files written.
func WritePlots(dir string, ss []Summary) ([]string, error) {
	type figKey struct {
		app, wl string
		dl      float64
	}
	figs := map[figKey][]Summary{}
	var order []figKey
	for _, r := range ss {
		if r.Err != "" {
			continue
		}
		k := figKey{r.App, r.Workload, r.DeadlineMS}
		if _, ok := figs[k]; !ok {
			order = append(order, k)
		}
		figs[k] = append(figs[k], r)
	}
	var files []string
	for _, k := range order {
		base := filepath.Join(dir, fmt.Sprintf("%s-%s-%gms", k.app, k.wl, k.dl))
		title := fmt.Sprintf("%s / %s / deadline %g ms", k.app, k.wl, k.dl)
		if err := writeFigure(base+".png", title, figs[k]); err != nil {
			return files, err
		}
		files = append(files, base+".png")
		ok, err := writeClassFigure(base+"-classes.png", title, figs[k])
		if err != nil {
			return files, err
		}
		if ok {
			files = append(files, base+"-classes.png")
		}
	}
	return files, nil
}

// policiesOf lists the policies of rs in order of first appearance.
func policiesOf(rs []Summary) []string {
	var policies []string
	for _, r := range rs {
		if !slices.Contains(policies, r.Policy) {
			policies = append(policies, r.Policy)
		}
	}
	return policies
}

// addPolicyLines draws, for every policy, get(summary) against load (summaries
// where get reports false are left out); with ci, error bars of ci(summary)
// either side; with legend, the policy names in p's legend. Each policy keeps
// the colour, dashes and shape of its place in all (every panel of a figure
// draws one policy alike).
func addPolicyLines(p *plot.Plot, all, policies []string, rs []Summary, get func(Summary) (float64, bool), ci func(Summary) float64, legend bool) error {
	for _, pol := range policies {
		i := slices.Index(all, pol)
		var sel []Summary
		for _, r := range rs {
			if r.Policy == pol {
				sel = append(sel, r)
			}
		}
		slices.SortFunc(sel, func(a, b Summary) int { return cmp.Compare(a.Load, b.Load) })
		var xy plotter.XYs
		var errs plotter.YErrors
		for _, r := range sel {
			y, ok := get(r)
			if !ok {
				continue
			}
			xy = append(xy, plotter.XY{X: r.Load, Y: y})
			if ci != nil {
				errs = append(errs, struct{ Low, High float64 }{ci(r), ci(r)})
			}
		}
		if len(xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return fmt.Errorf("eval: plot: %w", err)
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		if ci != nil {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYer
				plotter.YErrorer
			}{xy, errs})
			if err != nil {
				return fmt.Errorf("eval: plot: %w", err)
			}
			eb.Color = plotutil.Color(i)
			p.Add(eb)
		}
		if legend {
			p.Legend.Add(pol, l, pts)
		}
	}
	p.Legend.Top = false
	p.Legend.Left = true
	return nil
}

// diffFloor is how far below the reference a policy may fall and still be drawn
// on the difference panel.
const diffFloor = 0.05

func writeFigure(path, title string, rs []Summary) error {
	policies := policiesOf(rs)
	utilityCI := func(r Summary) float64 { return r.UtilityCI }
	metrics := []struct {
		name string
		get  func(Summary) (float64, bool)
		ci   func(Summary) float64
	}{
		{"mean utility", func(r Summary) (float64, bool) { return r.Utility, true }, utilityCI},
		{"accuracy", func(r Summary) (float64, bool) { return r.Accuracy, true }, nil},
		{"deadline met", func(r Summary) (float64, bool) { return r.Met, true }, nil},
	}
	var row []*plot.Plot
	for j, m := range metrics {
		p := plot.New()
		p.Title.Text = m.name
		if j == 0 {
			p.Title.Text = title + "\n" + m.name
		}
		p.X.Label.Text = "load (fraction of capacity)"
		p.Y.Label.Text = m.name
		p.Add(plotter.NewGrid())
		if err := addPolicyLines(p, policies, policies, rs, m.get, m.ci, j == 0); err != nil {
			return err
		}
		row = append(row, p)
	}
	if p, err := diffPanel(policies, rs); err != nil {
		return err
	} else if p != nil {
		row = append(row, p)
	}
	return savePNG(path, [][]*plot.Plot{row}, vg.Length(400*len(row)), 380)
}

// diffPanel draws each policy's utility minus the reference's with the paired
// 95% interval (nil when the summaries have no reference).
func diffPanel(policies []string, rs []Summary) (*plot.Plot, error) {
	ref := ""
	low := map[string]bool{}
	for _, r := range rs {
		if r.Reference != "" {
			ref = r.Reference
			if r.Diff < -diffFloor {
				low[r.Policy] = true
			}
		}
	}
	if ref == "" {
		return nil, nil
	}
	var shown, off []string
	for _, pol := range policies {
		switch {
		case pol == ref:
		case low[pol]:
			off = append(off, pol)
		default:
			shown = append(shown, pol)
		}
	}
	p := plot.New()
	p.Title.Text = "utility minus " + ref + " (paired 95% interval)"
	if len(off) > 0 {
		p.Title.Text += fmt.Sprintf("\noff the scale (> %g below): %s", diffFloor, strings.Join(off, ", "))
	}
	p.X.Label.Text = "load (fraction of capacity)"
	p.Y.Label.Text = "difference in mean utility"
	p.Add(plotter.NewGrid())
	zero := plotter.NewFunction(func(float64) float64 { return 0 })
	zero.Color = color.Gray{Y: 80}
	zero.Width = vg.Points(1)
	p.Add(zero)
	get := func(r Summary) (float64, bool) { return r.Diff, r.Reference != "" }
	if err := addPolicyLines(p, policies, shown, rs, get, func(r Summary) float64 { return r.DiffCI }, false); err != nil {
		return nil, err
	}
	return p, nil
}

// writeClassFigure writes the per-class recall figure; it writes nothing and
// reports false when the summaries carry no per-class metrics.
func writeClassFigure(path, title string, rs []Summary) (bool, error) {
	var classes []string
	for _, r := range rs {
		for _, c := range r.PerClass {
			if !slices.Contains(classes, c.Class) {
				classes = append(classes, c.Class)
			}
		}
	}
	if len(classes) == 0 {
		return false, nil
	}
	policies := policiesOf(rs)
	cols := min(len(classes), 5)
	rows := (len(classes) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for j, class := range classes {
		p := plot.New()
		p.Title.Text = "recall: " + class
		if j == 0 {
			p.Title.Text = title + "\nrecall: " + class
		}
		p.X.Label.Text = "load"
		p.Y.Min, p.Y.Max = 0, 1
		p.Add(plotter.NewGrid())
		get := func(r Summary) (float64, bool) {
			for _, c := range r.PerClass {
				if c.Class == class {
					return c.Recall, true
				}
			}
			return 0, false
		}
		if err := addPolicyLines(p, policies, policies, rs, get, nil, j == 0); err != nil {
			return false, err
		}
		grid[j/cols][j%cols] = p
	}
	for r := range grid {
		for c := range grid[r] {
			if grid[r][c] == nil {
				grid[r][c] = plot.New()
				grid[r][c].HideAxes()
			}
		}
	}
	return true, savePNG(path, grid, vg.Length(260*cols), vg.Length(240*rows))
}

// savePNG lays the plots out in a grid on a w x h (points) image and writes it.
func savePNG(path string, grid [][]*plot.Plot, w, h vg.Length) error {
	img := vgimg.New(vg.Points(float64(w)), vg.Points(float64(h)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: vg.Points(12), PadY: vg.Points(12),
		PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(6)}
	canvases := plot.Align(grid, tiles, dc)
	for i, row := range grid {
		for j, p := range row {
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("eval: write %s: %w", path, err)
	}
	return f.Close()
}
