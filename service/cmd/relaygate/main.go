// Command relaygate produces the evidence for a migration to a relay.
//
//	relaygate compare -config config/gateway.yaml -model gpt-4.1 -upstreams holysheep,openai
//	relaygate report -prometheus http://127.0.0.1:9090 -window 24h > report.md
//
// compare, before migrating: sends the same prompts to two or more upstreams
// of a gateway config, interleaved, and measures latency, TTFT, errors,
// timeouts, tokens per second and cost per million tokens from the real
// usage, with the monthly cost and savings at a volume you give.
//
// report, after migrating: reads the same figures for the traffic the
// gateway served from Prometheus over a window; -by team or -by key adds
// the table per team or named key (config keys:).
//
// Both print a table (text, Markdown or JSON) and can write JSON and a PNG
// chart of the latency distributions. Progress and problems go to stderr, so
// stdout can be redirected to a file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/commalist"
	"github.com/relaygate/relaygate/service/internal/migration"
)

// Exit statuses.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130
)

const usage = `usage: relaygate <command> [flags]

commands:
  compare   measure upstreams side by side before a migration
  report    the same figures from Prometheus after it

Run "relaygate <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is the whole command; main only wires the process to it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "compare":
		return runCompare(ctx, args[1:], stdout, stderr, getenv)
	case "report":
		return runReport(ctx, args[1:], stdout, stderr, getenv)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "relaygate: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}

// outputs are the flags both commands share.
type outputs struct {
	format, jsonPath, chartPath string
}

func (o *outputs) register(fs *flag.FlagSet, defaultFormat string) {
	fs.StringVar(&o.format, "format", defaultFormat, "what to print on stdout: text, markdown or json")
	fs.StringVar(&o.jsonPath, "json", "", "also write the full result as JSON to this file")
	fs.StringVar(&o.chartPath, "chart", "", "also draw the latency distributions into this PNG file")
}

func (o *outputs) check() error {
	switch o.format {
	case "text", "markdown", "json":
		return nil
	}
	return fmt.Errorf("-format %q: use text, markdown or json", o.format)
}

// result is what both commands produce.
type result interface {
	WriteJSON(io.Writer) error
	WriteChart(path string) error
}

// write prints the result in the chosen format and writes the files asked
// for. A chart with nothing to draw is a warning, not a failure: the table
// already says that every request failed.
func (o *outputs) write(res result, text, markdown func(io.Writer) error, stdout, stderr io.Writer) error {
	var err error
	switch o.format {
	case "json":
		err = res.WriteJSON(stdout)
	case "markdown":
		err = markdown(stdout)
	default:
		err = text(stdout)
	}
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if o.jsonPath != "" {
		if err := writeFile(o.jsonPath, res.WriteJSON); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "relaygate: wrote %s\n", o.jsonPath)
	}
	if o.chartPath != "" {
		if err := mkParent(o.chartPath); err != nil {
			return err
		}
		switch err := res.WriteChart(o.chartPath); {
		case errors.Is(err, migration.ErrNothingToChart):
			fmt.Fprintf(stderr, "relaygate: no chart: %v\n", err)
		case err != nil:
			return err
		default:
			fmt.Fprintf(stderr, "relaygate: wrote %s\n", o.chartPath)
		}
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	if err := mkParent(path); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func mkParent(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create the directory of %s: %w", path, err)
	}
	return nil
}

func defaultConfig(getenv func(string) string) string {
	if p := getenv("GATEWAY_CONFIG"); p != "" {
		return p
	}
	return "config/gateway.yaml"
}

func runCompare(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("relaygate compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		out         outputs
		configPath  = fs.String("config", defaultConfig(getenv), "gateway configuration: upstreams, models, prices (default $GATEWAY_CONFIG or config/gateway.yaml)")
		modelName   = fs.String("model", "", "model of the config to compare (may be left out when the config has one)")
		upstreams   = fs.String("upstreams", "", "comma-separated upstreams to compare (default: the model's route)")
		promptsPath = fs.String("prompts", "config/prompts.jsonl", "JSONL prompt set: {\"messages\": [...], \"max_tokens\": N} or {\"prompt\": \"...\"} per line")
		requests    = fs.Int("n", 100, "requests per upstream")
		concurrency = fs.Int("concurrency", 4, "requests in flight per upstream")
		stream      = fs.String("stream", string(migration.StreamMixed), "which requests stream: mixed (alternating), on or off")
		timeout     = fs.Duration("timeout", 0, "limit of one request (default: each upstream's timeout from the config)")
		monthly     = fs.String("monthly-tokens", "100M", "monthly volume, prompt plus completion tokens, for monthly cost and savings (e.g. 250M, 1.5B; 0: leave out)")
		noWarmup    = fs.Bool("no-warmup", false, "do not open connections (GET /models) before measuring")
	)
	out.register(fs, "text")
	if status, ok := parseArgs(fs, args, stderr); !ok {
		return status
	}
	volume, err := parseVolume(*monthly)
	if err == nil {
		err = out.check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitUsage
	}

	cfg, err := migration.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitFailed
	}
	prompts, err := migration.LoadPrompts(*promptsPath)
	if err != nil {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitFailed
	}
	name, err := pickModel(cfg, *modelName)
	if err != nil {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitUsage
	}
	opts := migration.CompareOptions{
		Model:         name,
		Upstreams:     commalist.Split(*upstreams),
		Prompts:       prompts,
		PromptSource:  *promptsPath,
		Requests:      *requests,
		Concurrency:   *concurrency,
		Stream:        migration.StreamMode(*stream),
		Timeout:       *timeout,
		MonthlyTokens: volume,
		NoWarmup:      *noWarmup,
		Progress:      newProgressPrinter(stderr).print,
	}
	res, err := migration.Compare(ctx, cfg, opts)
	interrupted := res != nil && res.Interrupted
	if err != nil && !interrupted {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitUsage
	}
	if interrupted {
		fmt.Fprintln(stderr, "\nrelaygate compare: interrupted; the figures cover what completed")
	}
	table := res.Table()
	err = out.write(res, table.WriteText, func(w io.Writer) error { return table.WriteMarkdown(w, 2) }, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "relaygate compare: %v\n", err)
		return exitFailed
	}
	if interrupted {
		return exitInterrupted
	}
	return exitOK
}

func runReport(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("relaygate report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defaultProm := getenv("PROMETHEUS_URL")
	if defaultProm == "" {
		defaultProm = "http://127.0.0.1:9090"
	}
	var (
		out        outputs
		promURL    = fs.String("prometheus", defaultProm, "Prometheus that scrapes the gateway (default $PROMETHEUS_URL or http://127.0.0.1:9090)")
		window     = fs.String("window", "24h", "how far back to look: 1h, 24h, 7d, 30d, ...")
		endFlag    = fs.String("end", "", "end of the window, RFC 3339 (default: now)")
		match      = fs.String("match", "", `label matchers added to every series, e.g. 'env="prod"'`)
		configPath = fs.String("config", defaultConfig(getenv), "gateway configuration, for reference prices (empty: leave out what needs them)")
		timeout    = fs.Duration("timeout", 2*time.Minute, "limit for all the queries")
		by         = fs.String("by", "", "also break the figures down by team or key (named keys, config keys:)")
	)
	out.register(fs, "markdown")
	if status, ok := parseArgs(fs, args, stderr); !ok {
		return status
	}
	win, err := migration.ParseWindow(*window)
	if err == nil {
		err = out.check()
	}
	if err == nil && *by != "" && *by != migration.ByTeam && *by != migration.ByKey {
		err = fmt.Errorf("-by %q: use team or key", *by)
	}
	var end time.Time
	if err == nil && *endFlag != "" {
		if end, err = time.Parse(time.RFC3339, *endFlag); err != nil {
			err = fmt.Errorf("-end %q: use RFC 3339, e.g. 2025-11-30T00:00:00Z", *endFlag)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "relaygate report: %v\n", err)
		return exitUsage
	}

	var cfg *config.Config
	if *configPath != "" {
		if cfg, err = migration.LoadConfig(*configPath); err != nil {
			fmt.Fprintf(stderr, "relaygate report: %v (pass -config \"\" to report without reference prices)\n", err)
			return exitFailed
		}
	}
	client, err := api.NewClient(api.Config{Address: *promURL})
	if err != nil {
		fmt.Fprintf(stderr, "relaygate report: Prometheus %s: %v\n", config.RedactURL(*promURL), err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res, err := migration.Report(ctx, migration.ReportOptions{
		API: promv1.NewAPI(client), Source: config.RedactURL(*promURL),
		Window: win, End: end, Match: *match, Config: cfg, By: *by,
	})
	if err != nil {
		fmt.Fprintf(stderr, "relaygate report: %v\n", err)
		return exitFailed
	}
	if err := out.write(res, res.WriteText, res.WriteMarkdown, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "relaygate report: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// parseArgs parses a subcommand's flags, which take no arguments after
// them. When it returns false the command ends with the status: success
// for -help, a usage error otherwise.
func parseArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return exitUsage, false
	}
	return exitOK, true
}

// pickModel is the model asked for, or the config's only one.
func pickModel(cfg *config.Config, name string) (string, error) {
	if name != "" {
		return name, nil
	}
	if len(cfg.Models) == 1 {
		return cfg.Models[0].Name, nil
	}
	var names []string
	for _, m := range cfg.Models {
		names = append(names, m.Name)
	}
	return "", fmt.Errorf("-model is required: the config has %s", strings.Join(names, ", "))
}

// parseVolume reads a token volume: 250000000, 250M, 1.5B, 800k.
func parseVolume(flagValue string) (float64, error) {
	s := strings.TrimSpace(flagValue)
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1e3, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1e6, s[:len(s)-1]
	case strings.HasSuffix(s, "B"), strings.HasSuffix(s, "G"):
		mult, s = 1e9, s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("-monthly-tokens %q: give a number of tokens such as 250M or 1.5B", flagValue)
	}
	return v * mult, nil
}
