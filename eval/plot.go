package eval

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WritePlots writes two PNGs per (application, workload, deadline) into dir:
// APP-WORKLOAD-Dms.png, three panels (mean utility with its 95% interval over
// seeds, accuracy, deadline-met ratio) against load, one line per policy; and
// APP-WORKLOAD-Dms-classes.png, the recall of every true class against load
// (the requests of that class answered with it, by a model or the estimate),
// one panel per class, so that what overload costs each class is visible. It
// returns the files written.
func WritePlots(dir string, rs []Result) ([]string, error) {
	type figKey struct {
		app, wl string
		dl      float64
	}
	figs := map[figKey][]Summary{}
	var order []figKey
	for _, r := range Summarize(rs, "") {
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
// where get reports false are left out); with ci, the utility's 95% interval as
// error bars; with legend, the policy names in p's legend.
func addPolicyLines(p *plot.Plot, policies []string, rs []Summary, get func(Summary) (float64, bool), ci, legend bool) error {
	for i, pol := range policies {
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
			errs = append(errs, struct{ Low, High float64 }{r.UtilityCI, r.UtilityCI})
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
		if ci {
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

func writeFigure(path, title string, rs []Summary) error {
	policies := policiesOf(rs)
	metrics := []struct {
		name string
		get  func(Summary) (float64, bool)
	}{
		{"mean utility", func(r Summary) (float64, bool) { return r.Utility, true }},
		{"accuracy", func(r Summary) (float64, bool) { return r.Accuracy, true }},
		{"deadline met", func(r Summary) (float64, bool) { return r.Met, true }},
	}
	row := make([]*plot.Plot, len(metrics))
	for j, m := range metrics {
		p := plot.New()
		p.Title.Text = m.name
		if j == 0 {
			p.Title.Text = title + "\n" + m.name
		}
		p.X.Label.Text = "load (fraction of capacity)"
		p.Y.Label.Text = m.name
		p.Add(plotter.NewGrid())
		if err := addPolicyLines(p, policies, rs, m.get, j == 0, j == 0); err != nil {
			return err
		}
		row[j] = p
	}
	return savePNG(path, [][]*plot.Plot{row}, 1200, 380)
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
		if err := addPolicyLines(p, policies, rs, get, false, j == 0); err != nil {
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
