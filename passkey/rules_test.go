package passkey

import (
	"errors"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC)
	t1 = t0.Add(5 * time.Minute)
)

func user(mod func(*User)) *User {
	u := &User{
		ID: "u1", ResourceOwner: "org1", Sequence: 3, CreationDate: t0, ChangeDate: t0,
		Passkeys: []Passkey{{ID: "pk-1", Name: "YubiKey", State: StateReady}},
	}
	if mod != nil {
		mod(u)
	}
	return u
}

var (
	self      = Principal{Subject: "u1"}
	stranger  = Principal{Subject: "u2"}
	orgAdmin  = Principal{Subject: "admin", Org: "org1", Admin: true}
	otherOrg  = Principal{Subject: "admin2", Org: "org2", Admin: true}
	sysAdmin  = Principal{Subject: "root", System: true}
	adminNoOr = Principal{Subject: "admin3", Admin: true}
)

func TestRemovePasskey(t *testing.T) {
	tests := []struct {
		name    string
		p       Principal
		userID  string
		user    *User
		req     RemoveRequest
		wantErr *Error
	}{
		{"LastLoginMethod", self, "u1", user(nil), RemoveRequest{TokenID: "pk-1"}, ErrPasskeyLast},
		{"LastLoginMethodWithSecondFactors", self, "u1", user(func(u *User) { u.U2F = []string{"x"}; u.OTP = true }), RemoveRequest{TokenID: "pk-1"}, ErrPasskeyLast},
		{"LastReadyWithNotReadyOther", self, "u1", user(func(u *User) { u.Passkeys = append(u.Passkeys, Passkey{ID: "pk-2", State: StateNotReady}) }), RemoveRequest{TokenID: "pk-1"}, ErrPasskeyLast},
		{"PasswordRemains", self, "u1", user(func(u *User) { u.Password = true }), RemoveRequest{TokenID: "pk-1"}, nil},
		{"IdPLinkRemains", self, "u1", user(func(u *User) { u.IDPLinks = []string{"google"} }), RemoveRequest{TokenID: "pk-1"}, nil},
		{"OtherReadyPasskeyRemains", self, "u1", user(func(u *User) { u.Passkeys = append(u.Passkeys, Passkey{ID: "pk-2", State: StateReady}) }), RemoveRequest{TokenID: "pk-1"}, nil},
		{"NotReadyAlwaysRemovable", self, "u1", user(func(u *User) { u.Passkeys[0].State = StateNotReady }), RemoveRequest{TokenID: "pk-1"}, nil},
		{"ForceByAdminSkipsLastCheck", orgAdmin, "u1", user(nil), RemoveRequest{TokenID: "pk-1", Force: true}, nil},
		{"ForceBySystemSkipsLastCheck", sysAdmin, "u1", user(nil), RemoveRequest{TokenID: "pk-1", Force: true}, nil},
		{"AdminWithoutForceStillChecked", orgAdmin, "u1", user(nil), RemoveRequest{TokenID: "pk-1"}, ErrPasskeyLast},
		{"ForceBySelfDenied", self, "u1", user(func(u *User) { u.Password = true }), RemoveRequest{TokenID: "pk-1", Force: true}, ErrDeniedForce},
		{"SelfOnOtherUserDenied", stranger, "u1", user(nil), RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"SelfOnUnknownOtherUserDenied", stranger, "u1", nil, RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"OtherOrgAdminDenied", otherOrg, "u1", user(nil), RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"OtherOrgAdminForceDenied", otherOrg, "u1", user(nil), RemoveRequest{TokenID: "pk-1", Force: true}, ErrDeniedUser},
		{"AdminWithoutOrgDenied", adminNoOr, "u1", user(func(u *User) { u.Password = true }), RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"UnknownUser", self, "u1", nil, RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"UnknownUserForAdmin", orgAdmin, "u1", nil, RemoveRequest{TokenID: "pk-1"}, ErrDeniedUser},
		{"UnknownUserForSystem", sysAdmin, "u1", nil, RemoveRequest{TokenID: "pk-1"}, ErrUserNotFound},
		{"UnknownPasskey", self, "u1", user(func(u *User) { u.Password = true }), RemoveRequest{TokenID: "pk-9"}, ErrPasskeyNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before User
			if tt.user != nil {
				before = *tt.user.clone()
			}
			got, err := RemovePasskey(tt.p, tt.userID, tt.user, tt.req, t1)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if got != nil {
					t.Fatalf("got a user with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if got.Sequence != tt.user.Sequence+1 || !got.ChangeDate.Equal(t1) || !got.CreationDate.Equal(t0) {
				t.Errorf("seq %d change %v creation %v", got.Sequence, got.ChangeDate, got.CreationDate)
			}
			for _, pk := range got.Passkeys {
				if pk.ID == tt.req.TokenID {
					t.Errorf("passkey %s still there", pk.ID)
				}
			}
			if len(tt.user.Passkeys) != len(before.Passkeys) || tt.user.Sequence != before.Sequence {
				t.Errorf("the input user was modified")
			}
		})
	}
}

func TestSyncUser(t *testing.T) {
	req := SyncRequest{ResourceOwner: "org1", Password: true, Passkeys: []Passkey{{ID: "pk-9", State: StateReady}}}
	tests := []struct {
		name    string
		p       Principal
		user    *User
		req     SyncRequest
		wantSeq uint64
		wantErr *Error
	}{
		{"CreatesUser", orgAdmin, nil, req, 1, nil},
		{"SystemCreatesUser", sysAdmin, nil, req, 1, nil},
		{"ReplacesSnapshot", orgAdmin, user(nil), req, 4, nil},
		{"SelfServiceDenied", self, user(nil), req, 0, ErrDeniedSync},
		{"OtherOrgAdminCreatingDenied", otherOrg, nil, req, 0, ErrDeniedSync},
		{"OtherOrgAdminOnExistingDenied", otherOrg, user(nil), SyncRequest{ResourceOwner: "org2"}, 0, ErrDeniedUser},
		{"ResourceOwnerImmutable", sysAdmin, user(nil), SyncRequest{ResourceOwner: "org2"}, 0, ErrOwnerImmutable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SyncUser(tt.p, "u1", tt.user, tt.req, t1)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if got.Sequence != tt.wantSeq {
				t.Errorf("sequence = %d, want %d", got.Sequence, tt.wantSeq)
			}
			wantCreation := t1
			if tt.user != nil {
				wantCreation = tt.user.CreationDate
			}
			if !got.CreationDate.Equal(wantCreation) || !got.ChangeDate.Equal(t1) {
				t.Errorf("creation %v change %v", got.CreationDate, got.ChangeDate)
			}
			if !got.Password || len(got.Passkeys) != 1 || got.Passkeys[0].ID != "pk-9" || got.ID != "u1" || got.ResourceOwner != "org1" {
				t.Errorf("snapshot not applied: %+v", got)
			}
		})
	}
}

func TestListPasskeys(t *testing.T) {
	tests := []struct {
		name    string
		p       Principal
		user    *User
		wantErr *Error
	}{
		{"Self", self, user(nil), nil},
		{"OrgAdmin", orgAdmin, user(nil), nil},
		{"StrangerDenied", stranger, user(nil), ErrDeniedUser},
		{"StrangerOnUnknownDenied", stranger, nil, ErrDeniedUser},
		{"OtherOrgAdminDenied", otherOrg, user(nil), ErrDeniedUser},
		{"Unknown", self, nil, ErrDeniedUser},
		{"UnknownForAdmin", orgAdmin, nil, ErrDeniedUser},
		{"UnknownForSystem", sysAdmin, nil, ErrUserNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ListPasskeys(tt.p, "u1", tt.user)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != 1 || got[0].ID != "pk-1" {
				t.Fatalf("got %v, %v", got, err)
			}
		})
	}
}
