// Package monitoring holds, beside its test, a Prometheus alerting rules
// file (alerts.yml) and a Grafana dashboard (dashboard.json) for the
// passkeys workers. The test checks every metric they use is one a worker
// exports. There is no Go code to import here.
package monitoring
