package otlpjson

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The light exporter posts OTLP/HTTP JSON as the OTLP specification's
// protobuf JSON mapping writes it: hex ids, the parent, kinds, times as
// strings, attributes by type, links and the error status; with the
// headers the environment gives, to <endpoint>/v1/traces.
func TestLightProviderPostsOTLPJSON(t *testing.T) {
	var mu sync.Mutex
	var got []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Authorization") != "Basic abc=" {
			t.Errorf("request %s %s, headers %v", r.Method, r.URL.Path, r.Header)
		}
		if err := json.Unmarshal(body, &req); err != nil {
			t.Errorf("body %s: %v", body, err)
		}
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
	}))
	defer srv.Close()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL + "/", "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20abc%3D"}
	t.Setenv("OTEL_SERVICE_NAME", "test-publisher") // the SDK's resource reads the process's environment
	tp, shutdown, err := LightProvider(context.Background(), func(k string) string { return env[k] }, "passkeys-publisher", "1")
	if err != nil {
		t.Fatal(err)
	}
	tr := tp.Tracer("scope-a")
	ctx, parent := tr.Start(context.Background(), "parent", trace.WithSpanKind(trace.SpanKindProducer))
	_, child := tr.Start(ctx, "child", trace.WithLinks(trace.Link{SpanContext: parent.SpanContext()}),
		trace.WithAttributes(attribute.String("s", "v"), attribute.Int("n", 7), attribute.Bool("b", true)))
	child.SetStatus(codes.Error, "PASSKEY-LAST")
	child.End()
	parent.End()
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("%d requests, want 1", len(got))
	}
	raw, _ := json.Marshal(got[0])
	var req struct {
		ResourceSpans []struct {
			Resource struct {
				Attributes []struct {
					Key   string
					Value map[string]any
				}
			}
			ScopeSpans []struct {
				Scope struct{ Name string }
				Spans []struct {
					TraceID, SpanID, ParentSpanID, Name string
					Kind                                int
					StartTimeUnixNano, EndTimeUnixNano  string
					Attributes                          []struct {
						Key   string
						Value map[string]any
					}
					Links  []struct{ TraceID, SpanID string }
					Status struct {
						Code    int
						Message string
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	rs := req.ResourceSpans[0]
	service := ""
	for _, a := range rs.Resource.Attributes {
		if a.Key == "service.name" {
			service, _ = a.Value["stringValue"].(string)
		}
	}
	if service != "test-publisher" {
		t.Errorf("service.name %q, want OTEL_SERVICE_NAME's", service)
	}
	spans := rs.ScopeSpans[0].Spans
	if rs.ScopeSpans[0].Scope.Name != "scope-a" || len(spans) != 2 {
		t.Fatalf("scope spans %+v", rs.ScopeSpans)
	}
	c, p := spans[0], spans[1]
	if c.Name != "child" || p.Name != "parent" || p.Kind != 4 || c.Kind != 1 {
		t.Fatalf("spans %+v", spans)
	}
	if c.TraceID != parent.SpanContext().TraceID().String() || c.ParentSpanID != p.SpanID || p.ParentSpanID != "" ||
		len(c.Links) != 1 || c.Links[0].SpanID != p.SpanID || c.StartTimeUnixNano == "" || c.EndTimeUnixNano < c.StartTimeUnixNano {
		t.Errorf("child %+v, parent %+v", c, p)
	}
	if c.Status.Code != 2 || c.Status.Message != "PASSKEY-LAST" {
		t.Errorf("status %+v", c.Status)
	}
	want := map[string]any{"s": map[string]any{"stringValue": "v"}, "n": map[string]any{"intValue": "7"}, "b": map[string]any{"boolValue": true}}
	for _, a := range c.Attributes {
		w, _ := json.Marshal(want[a.Key])
		g, _ := json.Marshal(a.Value)
		if string(w) != string(g) {
			t.Errorf("attribute %s = %s, want %s", a.Key, g, w)
		}
	}
}

// Nothing is set up without an endpoint, or with the SDK disabled.
func TestDisabledWithoutEndpoint(t *testing.T) {
	for _, env := range []map[string]string{{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}} {
		tp, _, err := LightProvider(context.Background(), func(k string) string { return env[k] }, "s", "")
		if tp != nil || err != nil {
			t.Errorf("env %v: provider %v, %v", env, tp, err)
		}
	}
	if _, _, err := LightProvider(context.Background(), func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}[k]
	}, "s", ""); err == nil {
		t.Error("an endpoint without a scheme was taken")
	}
}
