package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// apiTolerance is how far above chat's the other stream APIs' numbers may
// be (issue 12: "within 10% of Chat Completions'").
const apiTolerance = 1.10

// num is a measurement that may be missing: NaN, written as null in JSON.
type num float64

// MarshalJSON writes NaN (not measured) as null.
func (n num) MarshalJSON() ([]byte, error) { return json.Marshal(jsonNum(float64(n))) }

// StreamAPIComparison is one stream API through the gateway, measured in
// the same run as chat's streams (same simulator, tokens, chunk delay and
// rate, interleaved rounds) and compared with them. Times are in µs.
// Added is the stream's latency to its last event, gateway minus direct;
// TTFT is to the first content event at the client, through the gateway,
// and TTFTAdded its gateway-minus-direct part: TTFT's ratio is diluted by
// the simulator's chunk delay, TTFTAdded's is not. Ratios are to chat's
// (1 for chat itself).
type StreamAPIComparison struct {
	API            string `json:"api"`
	Scenario       string `json:"scenario"`
	Subject        string `json:"subject"`
	Streams        int    `json:"streams"`
	AddedP50       num    `json:"added_p50_us"`
	AddedP95       num    `json:"added_p95_us"`
	TTFTP50        num    `json:"ttft_p50_us"`
	TTFTP95        num    `json:"ttft_p95_us"`
	TTFTAddedP50   num    `json:"ttft_added_p50_us"`
	TTFTAddedP95   num    `json:"ttft_added_p95_us"`
	AddedP50Vs     num    `json:"added_p50_ratio"`
	AddedP95Vs     num    `json:"added_p95_ratio"`
	TTFTP50Vs      num    `json:"ttft_p50_ratio"`
	TTFTP95Vs      num    `json:"ttft_p95_ratio"`
	TTFTAddedP50Vs num    `json:"ttft_added_p50_ratio"`
	TTFTAddedP95Vs num    `json:"ttft_added_p95_ratio"`
	// Verdict is MET when every ratio is at most 1.10, NOT MET when one is
	// over, NOT MEASURED when a scenario or chat's baseline is missing.
	Verdict string `json:"verdict"`
	Note    string `json:"note,omitempty"`
}

// compareStreamAPIs compares the gateway's streams of each API with
// chat's; nil when no stream API besides chat ran.
func compareStreamAPIs(r *Report) []StreamAPIComparison {
	rows := map[string]*Row{}
	scenarios := map[string]string{}
	for i := range r.Scenarios {
		sc := &r.Scenarios[i]
		if sc.Kind != string(kindStreams) {
			continue
		}
		for j := range sc.Rows {
			if sc.Rows[j].Label == subjectGateway {
				rows[sc.API], scenarios[sc.API] = &sc.Rows[j], sc.Name
			}
		}
	}
	if len(rows) == 0 || (len(rows) == 1 && rows[apiChat.name] != nil) {
		return nil
	}
	chat := rows[apiChat.name]
	var out []StreamAPIComparison
	for _, api := range streamAPIs {
		row := rows[api.name]
		c := StreamAPIComparison{API: api.name, Scenario: scenarios[api.name], Subject: subjectGateway}
		nan := num(math.NaN())
		c.AddedP50, c.AddedP95, c.TTFTP50, c.TTFTP95, c.TTFTAddedP50, c.TTFTAddedP95 = nan, nan, nan, nan, nan, nan
		c.AddedP50Vs, c.AddedP95Vs, c.TTFTP50Vs, c.TTFTP95Vs, c.TTFTAddedP50Vs, c.TTFTAddedP95Vs = nan, nan, nan, nan, nan, nan
		switch {
		case row == nil:
			c.Verdict, c.Note = NotMeasured, "scenario not run"
		case row.Requests == 0 || row.Added == nil || row.TTFT == nil || row.TTFTAdded == nil:
			c.Streams = row.Requests
			c.Verdict, c.Note = NotMeasured, "no streams, or no direct row to subtract"
		default:
			c.Streams = row.Requests
			c.AddedP50, c.AddedP95 = num(row.Added.P50), num(row.Added.P95)
			c.TTFTP50, c.TTFTP95 = num(row.TTFT.P50), num(row.TTFT.P95)
			c.TTFTAddedP50, c.TTFTAddedP95 = num(row.TTFTAdded.P50), num(row.TTFTAdded.P95)
			c.judge(chat, row)
		}
		out = append(out, c)
	}
	return out
}

// judge fills the ratios to chat's and the verdict.
func (c *StreamAPIComparison) judge(chat, row *Row) {
	if chat == nil || chat.Requests == 0 || chat.Added == nil || chat.TTFT == nil || chat.TTFTAdded == nil {
		c.Verdict, c.Note = NotMeasured, "chat streams not run: nothing to compare with"
		return
	}
	ratio := func(v, base float64) num {
		if base <= 0 || math.IsNaN(v) {
			return num(math.NaN())
		}
		return num(v / base)
	}
	c.AddedP50Vs = ratio(row.Added.P50, chat.Added.P50)
	c.AddedP95Vs = ratio(row.Added.P95, chat.Added.P95)
	c.TTFTP50Vs = ratio(row.TTFT.P50, chat.TTFT.P50)
	c.TTFTP95Vs = ratio(row.TTFT.P95, chat.TTFT.P95)
	c.TTFTAddedP50Vs = ratio(row.TTFTAdded.P50, chat.TTFTAdded.P50)
	c.TTFTAddedP95Vs = ratio(row.TTFTAdded.P95, chat.TTFTAdded.P95)
	if c.API == apiChat.name {
		c.Verdict = "reference"
		return
	}
	c.Verdict = Met
	var over, missing []string
	for _, r := range []struct {
		name string
		v    num
	}{{"added p50", c.AddedP50Vs}, {"added p95", c.AddedP95Vs}, {"TTFT p50", c.TTFTP50Vs}, {"TTFT p95", c.TTFTP95Vs},
		{"added TTFT p50", c.TTFTAddedP50Vs}, {"added TTFT p95", c.TTFTAddedP95Vs}} {
		switch {
		case math.IsNaN(float64(r.v)):
			missing = append(missing, r.name)
		case float64(r.v) > apiTolerance:
			over = append(over, fmt.Sprintf("%s %.2f×", r.name, float64(r.v)))
		}
	}
	var notes []string
	if len(over) > 0 {
		c.Verdict = NotMet
		notes = append(notes, "over 1.10× chat's: "+strings.Join(over, ", "))
	}
	if len(missing) > 0 {
		if c.Verdict == Met {
			c.Verdict = NotMeasured
		}
		notes = append(notes, "no ratio for "+strings.Join(missing, ", ")+" (chat's added time not above 0: inside the noise)")
	}
	notes = append(notes, fmt.Sprintf("added p50 %s vs chat's %s", signedMicros(row.Added.P50-chat.Added.P50), fmtMicros(chat.Added.P50)))
	c.Note = strings.Join(notes, "; ")
}

// signedMicros prints a difference with its sign.
func signedMicros(us float64) string {
	if us > 0 {
		return "+" + fmtMicros(us)
	}
	if us == 0 {
		return "±0µs"
	}
	return fmtMicros(us)
}

// writeStreamAPIs writes the comparison table.
func writeStreamAPIs(w io.Writer, cs []StreamAPIComparison) {
	fmt.Fprintln(w, "== stream APIs vs chat (issue 12): gateway; added = gateway − direct, to the last event; TTFT to the first content event; goal ≤ 1.10× chat's")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "api\tscenario\tstreams\t+p50\t×chat\t+p95\t×chat\tTTFT p50\t×chat\tTTFT p95\t×chat\t+TTFT p50\t×chat\t+TTFT p95\t×chat\tverdict\t")
	for _, c := range cs {
		cells := []string{c.API, c.Scenario, fmt.Sprint(c.Streams),
			pair(c.AddedP50, c.AddedP50Vs), pair(c.AddedP95, c.AddedP95Vs), pair(c.TTFTP50, c.TTFTP50Vs),
			pair(c.TTFTP95, c.TTFTP95Vs), pair(c.TTFTAddedP50, c.TTFTAddedP50Vs), pair(c.TTFTAddedP95, c.TTFTAddedP95Vs), c.Verdict}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "   the gateway holds Messages and Responses lifecycle events until the first content event (its commit point, so a stream"+
		" that fails before content can fall back): their first event comes with it, TTFB equals TTFT and one gap per stream counts as held back")
	for _, c := range cs {
		if c.Note != "" {
			fmt.Fprintf(w, "   %s: %s\n", c.API, c.Note)
		}
	}
}

// pair is a time and its ratio to chat's, as two table cells.
func pair(us, ratio num) string {
	return fmtMicros(float64(us)) + "\t" + fmtRatio(float64(ratio))
}
