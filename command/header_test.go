package command_test

import (
	"slices"
	"testing"

	"github.com/passkeys/worker/command"
)

// ValuesFold finds a header under any spelling of its name, every value of
// every spelling, and never writes into the header it reads.
func TestValuesFold(t *testing.T) {
	for _, tt := range []struct {
		name string
		h    command.Header
		want []string
	}{
		{"None", command.Header{"Content-Type": {"application/json"}}, nil},
		{"Exact", command.Header{"Authorization": {"Bearer a"}}, []string{"Bearer a"}},
		{"OtherCase", command.Header{"authorization": {"Bearer a"}}, []string{"Bearer a"}},
		{"TwoSpellings", command.Header{"Authorization": {"Bearer a"}, "AUTHORIZATION": {"Bearer b", "Bearer c"}}, []string{"Bearer a", "Bearer b", "Bearer c"}},
		{"Prefix", command.Header{"Authorization-X": {"x"}, "Authorizatio": {"y"}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string][]string{}
			for k, v := range tt.h {
				before[k] = slices.Clone(v)
			}
			got := slices.Clone(command.Header(tt.h).ValuesFold("Authorization"))
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			for k, v := range tt.h {
				if !slices.Equal(v, before[k]) {
					t.Errorf("header %s changed: %q, was %q", k, v, before[k])
				}
			}
		})
	}
}
