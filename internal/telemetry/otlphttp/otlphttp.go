// Package otlphttp exports the worker's spans with OpenTelemetry's OTLP/HTTP
// exporter, configured by the standard environment variables (endpoint,
// headers, timeout, compression, TLS: see package telemetry).
package otlphttp

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/passkeys/worker/internal/telemetry"
)

// Provider returns the tracer provider the environment asks for, and the
// function that flushes and stops it; nil and a no-op when traces are not
// exported (Enabled is false).
func Provider(ctx context.Context, getenv func(string) string, service, version string) (trace.TracerProvider, func(context.Context) error, error) {
	if !telemetry.Enabled(getenv) {
		return nil, func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(telemetry.Resource(ctx, service, version)))
	return tp, tp.Shutdown, nil
}
