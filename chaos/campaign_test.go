package chaos

import (
	"context"
	"testing"
	"time"
)

// A short campaign with every fault kind this machine can inject (power
// cuts where FUSE is to be had) finds no anomaly: the history is accepted
// by the model and every invariant holds.
func TestShortCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three nats-server and three worker processes")
	}
	dir := t.TempDir()
	natsServer, worker, err := Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Seed: 1, Duration: 15 * time.Second, Users: 20, Clients: 4, Dir: dir, NATSConf: "../nats.conf",
		NATSServer: natsServer, Worker: worker, Power: FUSEAvailable(), Log: testWriter{t}}
	if !cfg.Power {
		t.Log("no FUSE here: power faults left out")
		for _, k := range AllFaults {
			if !PowerFaults(k) {
				cfg.Faults = append(cfg.Faults, k)
			}
		}
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(rep)
	if !rep.OK() {
		t.Fatalf("anomalies (history in %s)", rep.FailureDir)
	}
	if rep.Ops[OpRemove] == 0 || rep.Ops[OpList] == 0 || len(rep.FaultList) == 0 {
		t.Fatalf("the campaign did nothing to check: %v operations, %d faults", rep.Ops, len(rep.FaultList))
	}
}

// testWriter sends the campaign's progress to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
