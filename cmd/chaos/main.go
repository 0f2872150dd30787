// Command chaos runs the fault campaign (package chaos): three nats-server
// nodes and three workers under a seeded schedule of kills, freezes,
// network cuts and power cuts, with clients whose whole history is then
// checked against a per-user model. It prints its seed, its figures, and,
// on a failure, the folder with the history and the command that replays
// the fault schedule. Exit status 1: anomalies; 2: the campaign could not
// run.
//
//	go run ./cmd/chaos --seed 7 --duration 2m
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/passkeys/worker/chaos"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.Uint64("seed", 0, "the fault schedule's seed (0: a random one, printed)")
	duration := fs.Duration("duration", 2*time.Minute, "how long the clients and the faults run")
	faults := fs.String("faults", "all", "fault kinds, comma-separated, or all: "+strings.Join(chaos.AllFaults, ","))
	users := fs.Int("users", 40, "users (half of them with no password)")
	clients := fs.Int("clients", 6, "concurrent clients")
	dir := fs.String("dir", "", "working folder: disks, logs, and a failure's history (default: a new temporary one, removed when the campaign passes)")
	natsConf := fs.String("nats-conf", "nats.conf", "the nats.conf every node includes")
	without := fs.String("without", "", "the workers' --without: mechanisms switched off (early-answers)")
	workerArgs := fs.String("worker-args", "", "more flags for every worker, space-separated (--store-nosync)")
	alone := fs.Bool("alone", false, "one fault at a time, each after 12 to 16 s of quiet: unavailability against the goal of one fault at a time")
	history := fs.String("check", "", "check this history.jsonl of a failed campaign again, and run nothing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *history != "" {
		return checkAgain(*history, stdout, stderr)
	}
	cfg := chaos.Config{Seed: *seed, Duration: *duration, Users: *users, Clients: *clients, NATSConf: *natsConf,
		Dir: *dir, Power: chaos.FUSEAvailable(), Alone: *alone, Log: stdout}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if *without != "" {
		cfg.Without = strings.Split(*without, ",")
	}
	cfg.WorkerArgs = strings.Fields(*workerArgs)
	if *faults != "all" {
		cfg.Faults = strings.Split(*faults, ",")
	}
	if cfg.Faults == nil && !cfg.Power {
		fmt.Fprintln(stderr, "chaos: no FUSE here (root and /dev/fuse): power faults left out")
		cfg.Faults = withoutPower(chaos.AllFaults)
	}
	if err := cfg.CheckFaults(); err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 2
	}
	keep := cfg.Dir != ""
	if err := prepare(&cfg); err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 2
	}
	fmt.Fprintf(stdout, "chaos: seed %d, folder %s\n", cfg.Seed, cfg.Dir)
	rep, err := chaos.Run(ctx, cfg)
	replay := fmt.Sprintf("go run ./cmd/chaos --seed %d --duration %v --faults %s --users %d --clients %d --nats-conf %s",
		cfg.Seed, cfg.Duration, *faults, cfg.Users, cfg.Clients, cfg.NATSConf)
	if *without != "" {
		replay += " --without " + *without
	}
	return finish(cfg, rep, err, keep, replay, stdout, stderr)
}

// prepare makes cfg's working folder (a temporary one when none is given)
// and builds the programs the campaign runs.
func prepare(cfg *chaos.Config) error {
	if cfg.Dir == "" {
		tmp, err := os.MkdirTemp("", "chaos-")
		if err != nil {
			return err
		}
		cfg.Dir = tmp
	}
	var err error
	cfg.NATSServer, cfg.Worker, err = chaos.Build(cfg.Dir)
	return err
}

// finish prints the report and the verdict, and removes a temporary
// folder of a campaign that passed.
func finish(cfg chaos.Config, rep *chaos.Report, err error, keep bool, replay string, stdout, stderr io.Writer) int {
	if rep != nil {
		fmt.Fprint(stdout, rep)
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "chaos: %v\nreplay the fault schedule: %s\nlogs: %s\n", err, replay, cfg.Dir)
		return 2
	case !rep.OK():
		fmt.Fprintf(stderr, "chaos: ANOMALIES; history, faults and porcupine's picture in %s\nreplay the fault schedule: %s\n", rep.FailureDir, replay)
		fmt.Fprintln(stdout, "chaos: 0 passed, 1 failed")
		return 1
	}
	if !keep {
		if err := os.RemoveAll(cfg.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintln(stderr, "chaos:", err)
		}
	}
	fmt.Fprintln(stdout, "chaos: 1 passed, 0 failed")
	return 0
}

// checkAgain checks a failed campaign's history again.
func checkAgain(path string, stdout, stderr io.Writer) int {
	v, err := chaos.CheckHistory(path, 5*time.Minute)
	if err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 2
	}
	fmt.Fprintf(stdout, "model (porcupine): %s; anomalies: %d\n", v.Linearizable, len(v.Anomalies))
	for _, a := range v.Anomalies {
		fmt.Fprintln(stdout, "  ANOMALY", a)
	}
	if !v.OK() {
		return 1
	}
	return 0
}

func withoutPower(kinds []string) []string {
	var out []string
	for _, k := range kinds {
		if !chaos.PowerFaults(k) {
			out = append(out, k)
		}
	}
	return out
}
