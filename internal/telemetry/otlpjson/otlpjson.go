// Package otlpjson is a small OTLP/HTTP JSON exporter for the publisher, apart
// from package telemetry so that the worker does not link it.
package otlpjson

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/internal/telemetry"
)

// LightProvider is telemetry's provider with a small exporter of its own: OTLP/HTTP
// in its JSON encoding, one POST per batch, for the publisher, a command
// line tool that must stay small. The OpenTelemetry OTLP/HTTP exporter
// links gRPC and protobuf (13 MB of the publisher's 25) to send the same
// request as protobuf. It reads the endpoint, headers and timeout from the
// standard variables (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS,
// _TIMEOUT); it does not retry, and speaks no gRPC.
func LightProvider(ctx context.Context, getenv func(string) string, service, version string) (trace.TracerProvider, func(context.Context) error, error) {
	if !telemetry.Enabled(getenv) {
		return nil, func(context.Context) error { return nil }, nil
	}
	exp, err := newJSONExporter(getenv)
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(telemetry.Resource(ctx, service, version)))
	return tp, tp.Shutdown, nil
}

// jsonExporter posts spans to an OTLP/HTTP endpoint as JSON.
type jsonExporter struct {
	endpoint string
	headers  map[string]string
	client   *http.Client
}

func newJSONExporter(getenv func(string) string) (*jsonExporter, error) {
	pick := func(names ...string) string {
		for _, n := range names {
			if v := getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	endpoint := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" {
		endpoint = strings.TrimSuffix(getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "/") + "/v1/traces"
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("OTLP endpoint %q: want an http(s) URL", endpoint)
	}
	timeout := 10 * time.Second
	if ms := pick("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"); ms != "" {
		n, err := strconv.Atoi(ms)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("OTLP timeout %q: want milliseconds", ms)
		}
		timeout = time.Duration(n) * time.Millisecond
	}
	headers := map[string]string{}
	for _, kv := range strings.Split(pick("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if dv, err := url.QueryUnescape(strings.TrimSpace(v)); err == nil {
			v = dv
		}
		headers[strings.TrimSpace(k)] = v
	}
	return &jsonExporter{endpoint: endpoint, headers: headers, client: &http.Client{Timeout: timeout}}, nil
}

// ExportSpans posts spans as one ExportTraceServiceRequest.
func (e *jsonExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	body, _ := json.Marshal(request(spans)) // maps, strings and numbers always encode
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range e.headers {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("export spans: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("export spans: %s answered %s", e.endpoint, resp.Status)
	}
	return nil
}

// Shutdown has nothing to release.
func (e *jsonExporter) Shutdown(context.Context) error { return nil }

type object = map[string]any

// request is the OTLP ExportTraceServiceRequest of spans in the protobuf
// JSON mapping (ids in hex, 64-bit integers as strings), one scope per
// instrumentation library, all under the first span's resource.
func request(spans []sdktrace.ReadOnlySpan) object {
	scopes := map[string][]object{}
	var names []string
	for _, s := range spans {
		name := s.InstrumentationScope().Name
		if _, ok := scopes[name]; !ok {
			names = append(names, name)
		}
		scopes[name] = append(scopes[name], spanJSON(s))
	}
	var scopeSpans []object
	for _, n := range names {
		scopeSpans = append(scopeSpans, object{"scope": object{"name": n}, "spans": scopes[n]})
	}
	return object{"resourceSpans": []object{{
		"resource":   object{"attributes": attributes(spans[0].Resource().Attributes())},
		"scopeSpans": scopeSpans,
	}}}
}

func spanJSON(s sdktrace.ReadOnlySpan) object {
	sc := s.SpanContext()
	o := object{
		"traceId": sc.TraceID().String(), "spanId": sc.SpanID().String(), "name": s.Name(),
		"kind":              int(s.SpanKind()), // OTLP numbers the kinds as otel does
		"startTimeUnixNano": strconv.FormatInt(s.StartTime().UnixNano(), 10),
		"endTimeUnixNano":   strconv.FormatInt(s.EndTime().UnixNano(), 10),
		"attributes":        attributes(s.Attributes()),
	}
	if ts := sc.TraceState().String(); ts != "" {
		o["traceState"] = ts
	}
	if p := s.Parent(); p.IsValid() {
		o["parentSpanId"] = p.SpanID().String()
	}
	var links []object
	for _, l := range s.Links() {
		links = append(links, object{"traceId": l.SpanContext.TraceID().String(), "spanId": l.SpanContext.SpanID().String()})
	}
	if links != nil {
		o["links"] = links
	}
	switch st := s.Status(); st.Code {
	case codes.Error:
		o["status"] = object{"code": 2, "message": st.Description}
	case codes.Ok:
		o["status"] = object{"code": 1}
	}
	return o
}

func attributes(kvs []attribute.KeyValue) []object {
	out := make([]object, 0, len(kvs))
	for _, kv := range kvs {
		var v object
		switch kv.Value.Type() {
		case attribute.BOOL:
			v = object{"boolValue": kv.Value.AsBool()}
		case attribute.INT64:
			v = object{"intValue": strconv.FormatInt(kv.Value.AsInt64(), 10)}
		case attribute.FLOAT64:
			v = object{"doubleValue": kv.Value.AsFloat64()}
		default:
			v = object{"stringValue": kv.Value.String()}
		}
		out = append(out, object{"key": string(kv.Key), "value": v})
	}
	return out
}
