// Package service is the passkeys micro service: its request-reply
// endpoints forward remove and sync into stream PASSKEYS (the reply comes
// from the partition's handler), answer list and a repeat's stored outcome
// from the store of the user's partition, or from the worker that serves
// it (the internal subjects), and serve an operator's replay.
package service
