package migration

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// ErrNothingToChart is returned when no panel has a single measured point
// (every request failed, or Prometheus had no latency data).
var ErrNothingToChart = errors.New("no latency was measured, so there is nothing to chart")

// chartPanel is one plot: a latency distribution per series, as latency
// (y, log scale) at each percentile (x).
type chartPanel struct {
	title  string
	series []chartSeries
}

// chartSeries is one upstream's or model's distribution. A series with no
// points keeps its place, so each name has the same colour in every panel.
type chartSeries struct {
	name   string
	points plotter.XYs // X: percentile 0-100, Y: seconds
}

// sampleSeries turns samples into their percentiles 1 to 99 and 99.9.
func sampleSeries(name string, samples []time.Duration) chartSeries {
	s := chartSeries{name: name}
	if len(samples) == 0 {
		return s
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	for p := 1; p <= 99; p++ {
		s.points = append(s.points, plotter.XY{X: float64(p), Y: float64(quantile(sorted, float64(p)/100))})
	}
	s.points = append(s.points, plotter.XY{X: 99.9, Y: float64(quantile(sorted, 0.999))})
	return s
}

// writeChart draws the panels side by side into a PNG at path; the title
// heads the first panel. Panels with no points are left out.
func writeChart(path, title string, panels []chartPanel) error {
	var plots []*plot.Plot
	for _, pn := range panels {
		p, err := panelPlot(pn)
		if err != nil {
			return err
		}
		if p != nil {
			plots = append(plots, p)
		}
	}
	if len(plots) == 0 {
		return ErrNothingToChart
	}
	plots[0].Title.Text = title + "\n" + plots[0].Title.Text

	width, height := vg.Length(len(plots))*6*vg.Inch, 4.5*vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(110))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Inch / 3,
		PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 6}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for j, p := range plots {
		p.Draw(canvases[0][j])
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("chart %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return nil
}

// panelPlot draws one panel, or returns nil when it has nothing to show.
func panelPlot(pn chartPanel) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.title
	p.Title.TextStyle.Font.Size = vg.Points(10)
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "milliseconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = msTicks{}
	p.X.Min, p.X.Max = 0, 100
	p.X.Tick.Marker = plot.ConstantTicks{
		{Value: 0, Label: "0"}, {Value: 25, Label: "25"}, {Value: 50, Label: "50"},
		{Value: 75, Label: "75"}, {Value: 90, Label: "90"}, {Value: 95, Label: ""}, {Value: 99, Label: "99"},
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	drawn := 0
	for i, s := range pn.series {
		var pts plotter.XYs
		for _, pt := range s.points {
			// A log axis cannot show zero: 1µs stands for "below the scale".
			if !math.IsNaN(pt.Y) {
				pts = append(pts, plotter.XY{X: pt.X, Y: math.Max(pt.Y*1000, 0.001)})
			}
		}
		if len(pts) == 0 {
			continue
		}
		line, marks, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, fmt.Errorf("chart %s: %w", s.name, err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.6)
		line.Dashes = plotutil.Dashes(i)
		// Few points (percentiles read from histograms) are marked; a
		// distribution drawn from samples is a curve.
		if len(pts) <= 12 {
			marks.Color, marks.Shape = plotutil.Color(i), plotutil.Shape(i)
			p.Add(line, marks)
			p.Legend.Add(s.name, line, marks)
		} else {
			p.Add(line)
			p.Legend.Add(s.name, line)
		}
		drawn++
	}
	if drawn == 0 {
		return nil, nil
	}
	return p, nil
}

// msTicks labels a log axis of milliseconds at 1, 2 and 5 times each power
// of ten, or at every multiple when that leaves fewer than three labels, so
// that a range narrower than a decade (300ms to 1s) is still readable;
// plot.LogTicks labels powers of ten only.
type msTicks struct{}

// Ticks implements plot.Ticker.
func (msTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(lo > 0) || !(hi > lo) {
		return nil
	}
	var ticks []plot.Tick
	labelled := 0
	for exp := math.Floor(math.Log10(lo)); math.Pow(10, exp) <= hi; exp++ {
		base := math.Pow(10, exp)
		for m := 1; m <= 9; m++ {
			v := float64(m) * base
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = msLabel(v, exp)
				labelled++
			}
			ticks = append(ticks, t)
		}
	}
	if labelled < 3 {
		for i := range ticks {
			exp := math.Floor(math.Log10(ticks[i].Value) + 1e-9)
			ticks[i].Label = msLabel(ticks[i].Value, exp)
		}
	}
	return ticks
}

func msLabel(v, exp float64) string {
	return strconv.FormatFloat(v, 'f', int(max(0, -exp)), 64)
}
