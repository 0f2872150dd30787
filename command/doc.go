// Package command applies the commands of stream PASSKEYS to the store: it
// checks each command (its subject, headers, body and token), decides it by
// the rules of package passkey, and keeps, in the same bbolt transaction as
// the change, the Answer the command got, so that a redelivery, a replay or
// a repeat with the same Nats-Msg-Id gets the same answer and changes
// nothing. It does not import NATS: package handler reads the stream, feeds
// Applier, and sends and acknowledges what comes back.
package command
