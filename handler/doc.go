// Package handler adapts the passkeys service to NATS: the JetStream
// consumer that feeds stream PASSKEYS to a command.Applier and replies to
// and acknowledges each command after its batch committed, the passkeys
// micro service (forwarding endpoints, list, replay), the setup of the
// streams and the consumer, and the rendering of every answer in ZITADEL's
// shapes. It is the one place where an error becomes a wire body and
// Nats-Service-Error headers.
package handler
