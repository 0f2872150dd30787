package passkey

import (
	"slices"
	"time"
)

// State is a passkey's registration state, as the sync body writes it.
type State string

// The passkey states a sync may set.
const (
	StateReady    State = "ready"
	StateNotReady State = "not_ready"
)

// Passkey is one registered WebAuthn credential of a user.
type Passkey struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State State  `json:"state"`
}

// User is the login-method snapshot of one user, with its event sequence.
type User struct {
	ID            string    `json:"id"`
	ResourceOwner string    `json:"resourceOwner"`
	Sequence      uint64    `json:"sequence"`
	CreationDate  time.Time `json:"creationDate"`
	ChangeDate    time.Time `json:"changeDate"`
	Password      bool      `json:"password"`
	IDPLinks      []string  `json:"idpLinks"`
	Passkeys      []Passkey `json:"passkeys"`
	U2F           []string  `json:"u2f"`
	OTP           bool      `json:"otp"`
}

// clone returns a deep copy, so a rule never changes the record it was given.
func (u *User) clone() *User {
	c := *u
	c.IDPLinks = slices.Clone(u.IDPLinks)
	c.Passkeys = slices.Clone(u.Passkeys)
	c.U2F = slices.Clone(u.U2F)
	return &c
}

// FirstFactors counts the methods that let the user log in on their own:
// a password, a ready passkey, an IdP link. U2F and OTP are second factors.
func (u *User) FirstFactors() int {
	n := len(u.IDPLinks)
	if u.Password {
		n++
	}
	for _, pk := range u.Passkeys {
		if pk.State == StateReady {
			n++
		}
	}
	return n
}

// Principal is the authenticated caller, taken from a verified token.
type Principal struct {
	// Issuer is the token's iss.
	Issuer string
	// Subject is the acting user (the token's sub).
	Subject string
	// Org is the token's urn:zitadel:iam:user:resourceowner:id claim.
	Org string
	// Admin is the passkeys:admin scope: administrator of Org.
	Admin bool
	// System is the passkeys:system scope: administrator of every organisation.
	System bool
}

// administers reports whether p is an administrator of organisation org.
func (p Principal) administers(org string) bool {
	return p.System || (p.Admin && p.Org != "" && p.Org == org)
}

// mayAct reports whether p may act on user userID, stored as u (nil when unknown).
func (p Principal) mayAct(userID string, u *User) bool {
	if p.Subject == userID {
		return true
	}
	return u != nil && p.administers(u.ResourceOwner)
}

// mayAskAbout reports whether p may learn anything about userID at all. A
// self-service principal asking about another user is refused before the
// store is read, so the answer does not tell whether that user exists.
func (p Principal) mayAskAbout(userID string) bool {
	return p.Subject == userID || p.Admin || p.System
}

// unknownUser is the answer about a user the store does not hold: only a
// system principal learns that it does not exist; anyone else is told no
// more than about a user it may not see.
func (p Principal) unknownUser() *Error {
	if p.System {
		return ErrUserNotFound
	}
	return ErrDeniedUser
}
