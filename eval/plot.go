package eval

import (
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

// WritePlots writes one PNG per (application, workload, deadline) into dir: three
// panels (mean utility with its 95% interval over seeds, accuracy, deadline-met
// ratio) against load, one line per policy. It returns the files written.
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
		name := filepath.Join(dir, fmt.Sprintf("%s-%s-%gms.png", k.app, k.wl, k.dl))
		title := fmt.Sprintf("%s / %s / deadline %g ms", k.app, k.wl, k.dl)
		if err := writeFigure(name, title, figs[k]); err != nil {
			return files, err
		}
		files = append(files, name)
	}
	return files, nil
}

func writeFigure(path, title string, rs []Summary) error {
	var policies []string
	for _, r := range rs {
		if !slices.Contains(policies, r.Policy) {
			policies = append(policies, r.Policy)
		}
	}
	metrics := []struct {
		name string
		get  func(Summary) float64
	}{
		{"mean utility", func(r Summary) float64 { return r.Utility }},
		{"accuracy", func(r Summary) float64 { return r.Accuracy }},
		{"deadline met", func(r Summary) float64 { return r.Met }},
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
		for i, pol := range policies {
			var sel []Summary
			for _, r := range rs {
				if r.Policy == pol {
					sel = append(sel, r)
				}
			}
			slices.SortFunc(sel, func(a, b Summary) int {
				switch {
				case a.Load < b.Load:
					return -1
				case a.Load > b.Load:
					return 1
				}
				return 0
			})
			var xy plotter.XYs
			var errs plotter.YErrors
			for _, r := range sel {
				xy = append(xy, plotter.XY{X: r.Load, Y: m.get(r)})
				errs = append(errs, struct{ Low, High float64 }{r.UtilityCI, r.UtilityCI})
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
			if j == 0 {
				eb, err := plotter.NewYErrorBars(struct {
					plotter.XYer
					plotter.YErrorer
				}{xy, errs})
				if err != nil {
					return fmt.Errorf("eval: plot: %w", err)
				}
				eb.Color = plotutil.Color(i)
				p.Add(eb)
				p.Legend.Add(pol, l, pts)
			}
		}
		p.Legend.Top = false
		p.Legend.Left = true
		row[j] = p
	}
	img := vgimg.New(vg.Points(1200), vg.Points(380))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(row), PadX: vg.Points(12), PadTop: vg.Points(6),
		PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(6)}
	canvases := plot.Align([][]*plot.Plot{row}, tiles, dc)
	for j, p := range row {
		p.Draw(canvases[0][j])
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
