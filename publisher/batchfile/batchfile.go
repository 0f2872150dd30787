// Package batchfile reads the publisher's batch files: revocations as JSON
// Lines ({"userId","tokenId","force"}) or CSV (userId,tokenId[,force]), and
// syncs as JSON Lines ({"userId", <sync body>}), each valid line a Job ready
// to publish into the stream, each bad one reported with its line number.
package batchfile

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/passkeys/worker/client"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
)

// Job is one valid input line, ready to publish.
type Job struct {
	Line    int
	UserID  string
	Subject string // the stream subject, passkeys.cmd.<op>.<userId>
	Body    []byte
	Input   json.RawMessage // what the line asked, for the results file
	// Bearer, when set, is this line's own token (the benchmark's
	// self-service removals); otherwise the client's.
	Bearer string
	// Ask, when set, asks the request-reply endpoint for the line's
	// outcome with the client (the same body, with the options given: the
	// line's Nats-Msg-Id), for a line JetStream reports as a duplicate.
	Ask func(ctx context.Context, c *client.Client, opts ...client.CallOption) error
}

// BadLine is an input line that could not be read; it is reported, never dropped.
type BadLine struct {
	Line int
	Err  error
}

// syncLine is one line of a sync file: the user id beside the sync body.
type syncLine struct {
	UserID string `json:"userId"`
	passkey.SyncRequest
}

// ReadRevocations reads JSON Lines ({"userId","tokenId","force"}) or CSV with
// a header (userId,tokenId[,force]); which one, the first non-blank
// character tells.
func ReadRevocations(r io.Reader) ([]Job, []BadLine, error) {
	br := bufio.NewReader(r)
	first, err := firstByte(br)
	if err != nil {
		return nil, nil, err
	}
	if first == '{' {
		return readJSONLines(br, func(line int, raw []byte) (Job, error) {
			var in struct {
				UserID  string `json:"userId"`
				TokenID string `json:"tokenId"`
				Force   bool   `json:"force"`
			}
			if err := strictJSON(raw, &in); err != nil {
				return Job{}, err
			}
			return removalJob(line, in.UserID, in.TokenID, in.Force)
		})
	}
	return readCSV(br)
}

func removalJob(line int, userID, tokenID string, force bool) (Job, error) {
	if err := passkey.ValidateUserID(userID); err != nil {
		return Job{}, fmt.Errorf("userId %q: %w", userID, err)
	}
	body, _ := json.Marshal(passkey.RemoveRequest{TokenID: tokenID, Force: force})
	if _, err := passkey.DecodeRemove(body); err != nil {
		return Job{}, err
	}
	input, _ := json.Marshal(map[string]any{"userId": userID, "tokenId": tokenID, "force": force})
	ask := func(ctx context.Context, c *client.Client, opts ...client.CallOption) error {
		if force {
			opts = append(opts, client.Force())
		}
		_, err := c.Remove(ctx, userID, tokenID, opts...)
		return err
	}
	return Job{Line: line, UserID: userID, Subject: partition.CommandSubject(string(passkey.OpRemove), userID), Body: body, Input: input, Ask: ask}, nil
}

// ReadSyncs reads JSON Lines of {"userId": ..., <sync body>}.
func ReadSyncs(r io.Reader) ([]Job, []BadLine, error) {
	return readJSONLines(bufio.NewReader(r), func(line int, raw []byte) (Job, error) {
		var in syncLine
		if err := strictJSON(raw, &in); err != nil {
			return Job{}, err
		}
		if err := passkey.ValidateUserID(in.UserID); err != nil {
			return Job{}, fmt.Errorf("userId %q: %w", in.UserID, err)
		}
		// The body is the client's encoding of the user, so that a duplicate's
		// outcome, asked through the client, is asked with the same bytes.
		u := clientUser(in.UserID, in.SyncRequest)
		body, _ := json.Marshal(u) // strings, bools and slices of them always encode
		if _, err := passkey.DecodeSync(body); err != nil {
			return Job{}, err
		}
		ask := func(ctx context.Context, c *client.Client, opts ...client.CallOption) error {
			_, err := c.Sync(ctx, u, opts...)
			return err
		}
		return Job{Line: line, UserID: in.UserID, Subject: partition.CommandSubject(string(passkey.OpSync), in.UserID), Body: body,
			Input: json.RawMessage(raw), Ask: ask}, nil
	})
}

func firstByte(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.ReadByte()
		if err == io.EOF {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		if !strings.ContainsRune(" \t\r\n", rune(b)) {
			return b, br.UnreadByte()
		}
	}
}

func strictJSON(raw []byte, v any) error {
	if err := passkey.DecodeStrict(raw, v); err != nil {
		return fmt.Errorf("not a valid line: %v", err)
	}
	return nil
}

// readJSONLines reads one JSON object a line; blank lines and lines starting
// with # are skipped.
func readJSONLines(br *bufio.Reader, parse func(line int, raw []byte) (Job, error)) ([]Job, []BadLine, error) {
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 64<<10), passkey.MaxBodySize+1024)
	var jobs []Job
	var bad []BadLine
	for n := 1; sc.Scan(); n++ {
		raw := []byte(strings.TrimSpace(sc.Text()))
		if len(raw) == 0 || raw[0] == '#' {
			continue
		}
		j, err := parse(n, raw)
		if err != nil {
			bad = append(bad, BadLine{n, err})
			continue
		}
		jobs = append(jobs, j)
	}
	return jobs, bad, sc.Err()
}

func readCSV(br *bufio.Reader) ([]Job, []BadLine, error) {
	r := csv.NewReader(br)
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err == io.EOF {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("CSV header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(h)] = i
	}
	uc, ok1 := col["userId"]
	tc, ok2 := col["tokenId"]
	fc, hasForce := col["force"]
	if !ok1 || !ok2 {
		return nil, nil, fmt.Errorf("CSV header %q: want userId,tokenId[,force]", strings.Join(header, ","))
	}
	var jobs []Job
	var bad []BadLine
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		line, _ := r.FieldPos(0)
		if err != nil {
			bad = append(bad, BadLine{line, err})
			continue
		}
		if len(rec) != len(header) {
			bad = append(bad, BadLine{line, fmt.Errorf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		force := false
		if hasForce && strings.TrimSpace(rec[fc]) != "" {
			if force, err = strconv.ParseBool(strings.TrimSpace(rec[fc])); err != nil {
				bad = append(bad, BadLine{line, fmt.Errorf("force %q is not true or false", rec[fc])})
				continue
			}
		}
		j, err := removalJob(line, strings.TrimSpace(rec[uc]), strings.TrimSpace(rec[tc]), force)
		if err != nil {
			bad = append(bad, BadLine{line, err})
			continue
		}
		jobs = append(jobs, j)
	}
	return jobs, bad, nil
}

// clientUser is a sync line as the client's User.
func clientUser(id string, r passkey.SyncRequest) client.User {
	u := client.User{ID: id, ResourceOwner: r.ResourceOwner, Password: r.Password, IDPLinks: r.IDPLinks, U2F: r.U2F, OTP: r.OTP}
	if r.Passkeys != nil {
		u.Passkeys = make([]client.Passkey, len(r.Passkeys))
		for i, pk := range r.Passkeys {
			u.Passkeys[i] = client.Passkey{ID: pk.ID, Name: pk.Name, State: client.State(pk.State)}
		}
	}
	return u
}
