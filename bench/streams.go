package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// streamTimeout bounds one measured stream; streams last tens of
// milliseconds, so it only guards against a wedged subject.
const streamTimeout = 60 * time.Second

// streamShape is what every stream of a streams scenario must look like:
// the simulator sends the API's opening events, tokens content events and
// its closing ones, pausing chunkDelay before each content event and
// before the first closing one (apis.go lists each API's events): tokens+1
// paced gaps, from the event before the first content one to the event
// after the last.
type streamShape struct {
	tokens     int
	chunkDelay time.Duration
}

// runStreams opens streams at rate per second for d (open loop: a slow
// subject does not slow the arrivals) and measures, per stream, the time to
// its first event and to its first content event, and the gaps between
// paced events. A gap under half the source's pause means an event reached
// the client together with the one after it: it was held back somewhere on
// the way.
func runStreams(ctx context.Context, e entry, api *streamAPI, body []byte, shape streamShape, rate int, d time.Duration) run {
	stopRSS := sampleRSS(e)
	var (
		mu sync.Mutex
		r  run
		wg sync.WaitGroup
	)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for i := 0; ; i++ {
		at := time.Duration(i) * interval
		if at >= d {
			break
		}
		timer.Reset(time.Until(start.Add(at)))
		select {
		case <-ctx.Done():
			break schedule
		case <-timer.C:
		}
		wg.Go(func() {
			one, err := readStream(ctx, e, api, body, shape)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.fail(err.Error())
				return
			}
			r.ok++
			r.latencies = append(r.latencies, one.total)
			r.ttfb = append(r.ttfb, one.ttfb)
			r.ttft = append(r.ttft, one.ttft)
			r.gaps = append(r.gaps, one.gaps...)
			r.heldBack += one.heldBack
		})
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	r.maxRSS = stopRSS()
	return r
}

type streamTiming struct {
	// ttfb is to the first event, ttft to the first content event: the
	// APIs open with different framing, so only ttft compares across them.
	ttfb, ttft, total time.Duration
	gaps              []time.Duration
	heldBack          int
}

// streamEvent is one data event as read off the connection.
type streamEvent struct {
	at    time.Time
	class eventClass
}

// readStream sends one streamed request of api and times its events as
// they are read off the connection.
func readStream(ctx context.Context, e entry, api *streamAPI, body []byte, shape streamShape) (streamTiming, error) {
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.subject.url(e.role, api.path), bytes.NewReader(body))
	if err != nil {
		return streamTiming{}, err
	}
	req.Header = http.Header{"Content-Type": {"application/json"}, "Accept": {"text/event-stream"}}
	api.header(req.Header, e.subject.auth)
	t0 := time.Now()
	resp, err := e.subject.client.Do(req)
	if err != nil {
		return streamTiming{}, fmt.Errorf("stream request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return streamTiming{}, fmt.Errorf("stream: HTTP %d: %s", resp.StatusCode, b)
	}
	br := bufio.NewReaderSize(resp.Body, 16<<10)
	events, err := readEvents(br, api)
	if err != nil {
		return streamTiming{}, err
	}
	// Drain so the connection goes back to the pool.
	_, _ = io.Copy(io.Discard, br)
	return timeStream(events, t0, api, shape)
}

// readEvents reads SSE data events, stamping each as it arrives, up to
// the api's last one.
func readEvents(br *bufio.Reader, api *streamAPI) ([]streamEvent, error) {
	var (
		events []streamEvent
		name   []byte // the event: field of the event being read
	)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case bytes.HasPrefix(line, []byte("event:")):
			name = append(name[:0], bytes.TrimSpace(line[6:])...)
		case bytes.HasPrefix(line, []byte("data:")):
			ev := streamEvent{at: time.Now(), class: api.classify(name, bytes.TrimSpace(line[5:]))}
			events = append(events, ev)
			name = name[:0]
			if ev.class == eventLast {
				return events, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s stream ended after %d events without its last: %w", api.name, len(events), err)
		}
	}
}

// timeStream checks a stream's events against the shape and times them
// from t0, when the request was sent.
func timeStream(events []streamEvent, t0 time.Time, api *streamAPI, shape streamShape) (streamTiming, error) {
	if want := shape.tokens + api.framing; len(events) != want {
		return streamTiming{}, fmt.Errorf("%s stream had %d events, want %d", api.name, len(events), want)
	}
	first, last, content := -1, -1, 0
	for i, ev := range events {
		if ev.class == eventContent {
			if first < 0 {
				first = i
			}
			last = i
			content++
		}
	}
	if content != shape.tokens || first < 1 || last+1 >= len(events) {
		return streamTiming{}, fmt.Errorf("%s stream had %d content events (from event %d to %d of %d), want %d between framing ones",
			api.name, content, first, last, len(events), shape.tokens)
	}
	t := streamTiming{
		ttfb:  events[0].at.Sub(t0),
		ttft:  events[first].at.Sub(t0),
		total: events[len(events)-1].at.Sub(t0),
	}
	for i := first; i <= last+1; i++ {
		g := events[i].at.Sub(events[i-1].at)
		t.gaps = append(t.gaps, g)
		if g < shape.chunkDelay/2 {
			t.heldBack++
		}
	}
	return t, nil
}

// IdleStreams is the memory a subject needs to hold many open streams that
// wait on their upstream.
type IdleStreams struct {
	// Asked is how many streams the scenario wanted; Held how many were
	// open at once (fewer when the open-files limit does not allow more).
	Asked int `json:"asked"`
	Held  int `json:"held"`
	// Points are the resident set measured as the streams opened, in
	// batches; the first is before any stream.
	Points []RSSPoint `json:"points"`
	// BytesPerStream is the least-squares slope of Points.
	BytesPerStream float64 `json:"bytes_per_stream"`
	// RSSAtAsked is the resident set with Asked streams: measured when
	// Held == Asked, else extrapolated along the slope.
	RSSAtAsked   int64 `json:"rss_at_asked_bytes"`
	Extrapolated bool  `json:"extrapolated"`
	// Limit says what capped Held, when something did.
	Limit string `json:"limit,omitempty"`
}

// RSSPoint is a resident set with Streams streams open.
type RSSPoint struct {
	Streams int   `json:"streams"`
	RSS     int64 `json:"rss_bytes"`
}

// openParallel bounds how many streams are being opened at once, so the
// subject's accept queue does not overflow while thousands connect.
const openParallel = 128

// holdIdleStreams opens n streams in batches against the idle simulator
// (one chunk, then silence), reading the subject's resident set after each
// batch is fully open, then closes them all. asked (≥ n) is the count the
// memory is reported for; when fewer were held, it is extrapolated.
func holdIdleStreams(ctx context.Context, e entry, body []byte, asked, n, batches int) (run, error) {
	// A transport of its own: these connections are closed afterwards and
	// must not crowd the subject's pool.
	tr := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConns:       -1,
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	hold, release := context.WithCancel(ctx)
	defer release()

	var (
		all    sync.WaitGroup
		mu     sync.Mutex
		r      run
		opened atomic.Int64
	)
	fail := func(err error) {
		mu.Lock()
		r.fail(err.Error())
		mu.Unlock()
	}
	base, err := e.subject.rss(e.role)
	if err != nil {
		return run{}, err
	}
	idle := &IdleStreams{Asked: asked, Points: []RSSPoint{{0, base}}}
	sem := make(chan struct{}, openParallel)
	start := time.Now()
	open := func(b int) error {
		from, to := (b-1)*n/batches, b*n/batches
		var batch sync.WaitGroup
		defer batch.Wait()
		for range to - from {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			batch.Add(1)
			all.Go(func() {
				first := func(err error) {
					<-sem
					if err != nil {
						fail(err)
					} else {
						opened.Add(1)
					}
					batch.Done()
				}
				if err := holdStream(hold, client, e, body, first); err != nil {
					fail(err)
				}
			})
		}
		return nil
	}
	for b := 1; b <= batches; b++ {
		err := open(b)
		if err == nil {
			var rss int64
			rss, err = e.subject.rss(e.role)
			idle.Points = append(idle.Points, RSSPoint{int(opened.Load()), rss})
		}
		if err != nil {
			release()
			all.Wait()
			return run{}, err
		}
	}
	elapsed := time.Since(start)
	release()
	all.Wait()

	mu.Lock()
	defer mu.Unlock()
	r.elapsed = elapsed
	idle.Held = int(opened.Load())
	r.ok = idle.Held
	idle.BytesPerStream = slope(idle.Points)
	last := idle.Points[len(idle.Points)-1]
	idle.RSSAtAsked = last.RSS
	if idle.Held < asked {
		idle.Extrapolated = true
		idle.RSSAtAsked = last.RSS + int64(math.Round(idle.BytesPerStream*float64(asked-idle.Held)))
	}
	r.maxRSS = last.RSS
	r.idle = idle
	return r, nil
}

// holdStream opens one stream, calls first once its first event arrived
// (or it failed), then holds it until hold ends. It returns an error when
// the stream ended before that.
func holdStream(hold context.Context, client *http.Client, e entry, body []byte, first func(error)) error {
	req, err := http.NewRequestWithContext(hold, http.MethodPost, e.subject.url(e.role, "/v1/chat/completions"), bytes.NewReader(body))
	if err != nil {
		first(err)
		return nil
	}
	req.Header = http.Header{"Authorization": {e.subject.auth}, "Content-Type": {"application/json"}, "Accept": {"text/event-stream"}}
	resp, err := client.Do(req)
	if err != nil {
		first(fmt.Errorf("open stream: %w", err))
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		first(fmt.Errorf("open stream: HTTP %d: %s", resp.StatusCode, b))
		return nil
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			first(fmt.Errorf("stream ended before its first event: %w", err))
			return nil
		}
		if bytes.HasPrefix(line, []byte("data:")) {
			break
		}
	}
	first(nil)
	// Nothing more comes until the suite lets go: the read ends when hold
	// does. A stream that ends before is one the subject did not hold.
	_, err = io.Copy(io.Discard, br)
	if hold.Err() == nil {
		return fmt.Errorf("stream closed by the subject while held: %v", err)
	}
	return nil
}

// slope is the least-squares bytes per stream through the points.
func slope(ps []RSSPoint) float64 {
	if len(ps) < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for _, p := range ps {
		x, y := float64(p.Streams), float64(p.RSS)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(ps))
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}
