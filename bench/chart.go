package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// subjectColors keeps each subject's colour the same in every panel.
var subjectColors = map[string]color.RGBA{
	subjectDirect:       {R: 0x55, G: 0x55, B: 0x55, A: 0xff},
	subjectGateway:      {R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	subjectGatewayCache: {R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	subjectGoProxy:      {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	subjectNginx:        {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	"gateway fallback":  {R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// chart draws latency percentiles per subject, one panel per scenario
// (time to first byte for streams), on a log scale, into a PNG.
func (r *Report) chart(path string) error {
	var panels []*plot.Plot
	for _, sc := range r.Scenarios {
		if sc.Kind == string(kindIdle) {
			continue
		}
		p, err := latencyPanel(sc)
		if err != nil {
			return err
		}
		if p != nil {
			panels = append(panels, p)
		}
	}
	if len(panels) == 0 {
		return nil
	}
	const cols = 2
	rows := (len(panels) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
		for j := range cols {
			if k := i*cols + j; k < len(panels) {
				grid[i][j] = panels[k]
			}
		}
	}
	width, height := 12*vg.Inch, vg.Length(rows)*4*vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(100))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Inch / 3, PadY: vg.Inch / 3,
		PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 6}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j, p := range grid[i] {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// latencyPanel plots one scenario: x is the percentile, y the latency in
// milliseconds, one line per subject. Nil when nothing was measured.
func latencyPanel(sc ScenarioResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = sc.Name + ": " + sc.Title
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.Y.Label.Text = "latency (ms, log)"
	if sc.Kind == string(kindStreams) {
		p.Y.Label.Text = "time to first event (ms, log)"
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var ticks plot.ConstantTicks
	for i, n := range percentileNames {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: n})
	}
	p.X.Tick.Marker = ticks
	p.X.Min, p.X.Max = -0.2, float64(len(percentileNames))-0.8
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Add(plotter.NewGrid())
	drawn := 0
	for _, row := range sc.Rows {
		lat := row.Latency
		if row.TTFB != nil {
			lat = *row.TTFB
		}
		var pts plotter.XYs
		for i, v := range lat.values() {
			// A log axis cannot show zero; 1µs stands for "below the scale".
			if !math.IsNaN(v) {
				pts = append(pts, plotter.XY{X: float64(i), Y: math.Max(v, 1) / 1000})
			}
		}
		if len(pts) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, fmt.Errorf("chart %s %s: %w", sc.Name, row.Label, err)
		}
		c, ok := subjectColors[row.Label]
		if !ok {
			c = color.RGBA{A: 0xff}
		}
		line.Color, points.Color = c, c
		line.Width = vg.Points(1.5)
		p.Add(line, points)
		p.Legend.Add(row.Label, line, points)
		drawn++
	}
	if drawn == 0 {
		return nil, nil
	}
	return p, nil
}
