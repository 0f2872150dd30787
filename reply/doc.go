// Package reply is what a requester gets: every answer rendered in
// ZITADEL's shapes (Render, Error, List; the one place where an error
// becomes a wire body and Nats-Service-Error headers), the status names
// the metrics use.
package reply
