// Package reply is what a requester gets: every answer rendered in
// ZITADEL's shapes (Render, Error, List; the one place where an error
// becomes a wire body and Nats-Service-Error headers), the status names
// the metrics use, and the Guard that sends a consumer's replies so that
// a requester that was away still gets one.
package reply
