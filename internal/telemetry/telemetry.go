// Package telemetry sets up OpenTelemetry traces from the standard
// environment variables: spans are exported over OTLP/HTTP when
// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
// set, and not recorded at all otherwise; the sampler (OTEL_TRACES_SAMPLER)
// and the batch processor are configured as the SDK documents them, and
// OTEL_SERVICE_NAME overrides the service name. The worker exports with
// OpenTelemetry's own exporter (package otlphttp); the publisher, which
// must stay small, with LightProvider's.
package telemetry

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
)

// Enabled reports whether the environment asks for traces to be exported.
func Enabled(getenv func(string) string) bool {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Resource names the service, with what OTEL_RESOURCE_ATTRIBUTES
// and OTEL_SERVICE_NAME say on top.
func Resource(ctx context.Context, service, version string) *resource.Resource {
	res := resource.NewSchemaless(attribute.String("service.name", service), attribute.String("service.version", version))
	if merged, err := resource.Merge(resource.Default(), res); err == nil {
		res = merged
	}
	if fromEnv, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, fromEnv); err == nil {
			res = merged
		}
	}
	return res
}
