package monitoring

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/internal/testenv/testworker"
)

type rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type dashboard struct {
	Title  string `json:"title"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// Every rule is complete, and every expression of the rules and the
// dashboard uses only metrics a running worker exports (scraped from its
// /metrics after a sync and a removal).
func TestRulesAndDashboardUseExportedMetrics(t *testing.T) {
	exported := scrape(t)
	var exprs []string

	raw, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var r rules
	if err := yaml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	n := 0
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			n++
			sev := rule.Labels["severity"]
			if rule.Alert == "" || rule.Expr == "" || rule.For == "" || (sev != "page" && sev != "ticket") || rule.Annotations["summary"] == "" {
				t.Errorf("rule %q: want alert, expr, for, severity page or ticket, and a summary", rule.Alert)
			}
			if _, err := time.ParseDuration(rule.For); err != nil {
				t.Errorf("rule %s: for %q: %v", rule.Alert, rule.For, err)
			}
			exprs = append(exprs, rule.Expr)
		}
	}
	if n < 8 {
		t.Fatalf("%d rules read", n)
	}

	raw, err = os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}

	name := regexp.MustCompile(`passkeys_[a-z_]+`)
	used := 0
	for _, e := range exprs {
		if !balanced(e) {
			t.Errorf("unbalanced brackets in %s", e)
		}
		for _, m := range name.FindAllString(e, -1) {
			used++
			if !exported[m] {
				t.Errorf("%s is not a metric the worker exports (in %s)", m, e)
			}
		}
	}
	if used < len(exprs) {
		t.Errorf("%d metric names in %d expressions", used, len(exprs))
	}
}

// balanced reports whether e's (), {} and [] pair up.
func balanced(e string) bool {
	var stack []rune
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	for _, c := range e {
		switch c {
		case '(', '{', '[':
			stack = append(stack, c)
		case ')', '}', ']':
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0
}

// scrape runs a worker with --http-listen, syncs and removes through it,
// and returns the names of the series its /metrics has.
func scrape(t *testing.T) map[string]bool {
	t.Helper()
	ns := testenv.StartNATS(t)
	keys := testenv.NewKeys(t)
	addr := testenv.FreeAddr(t)
	cfg := testworker.Config(ns.ClientURL(), keys, t.TempDir())
	cfg.HTTPListen = addr
	testworker.Start(t, cfg)
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithToken(keys.Mint(t, testenv.Token{Subject: "ops", Scopes: []string{"passkeys:system"}})))
	if _, err := c.Sync(context.Background(), client.User{ID: "u1", ResourceOwner: "o", Password: true,
		Passkeys: []client.Passkey{{ID: "pk-1", State: client.StateReady}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Remove(context.Background(), "u1", "pk-1"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, _, _ := strings.Cut(line, " ")
		series, _, _ = strings.Cut(series, "{")
		names[series] = true
	}
	if !names["passkeys_commands_total"] || !names["passkeys_partitions_served"] {
		t.Fatalf("the scrape lacks the worker's metrics:\n%s", body)
	}
	return names
}
