package passkey

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// DecodeStrict decodes exactly one JSON object from body into v, a pointer
// to a struct. It refuses what encoding/json lets through: a key that
// matches a field only in another letter case ("TOKENID"), a key given
// twice, an unknown key, a value of the wrong type, and anything after the
// object. An unknown key is named in the error by a short prefix only.
//
// Errors: INVALID_ARGUMENT (REQUEST-BODY-INVALID).
func DecodeStrict(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: %s", describeJSONError(err))
	}
	// The body is valid JSON whose keys all name fields in some letter
	// case: what is left to check is the case, repeats and the end.
	s := keyScanner{b: body}
	if err := s.value(reflect.TypeOf(v)); err != nil {
		return err
	}
	if s.ws(); s.i != len(s.b) {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body must hold exactly one JSON object")
	}
	return nil
}

// keyScanner walks JSON that encoding/json has already accepted and checks
// every object's keys against the Go type it decoded into: each key once,
// and exactly a field's JSON name. It allocates only for a key written with
// escapes.
type keyScanner struct {
	b []byte
	i int
}

func (s *keyScanner) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// value checks the value at s.i, which decoded into type t (nil: unknown).
func (s *keyScanner) value(t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	s.ws()
	if s.i >= len(s.b) {
		return errMalformed
	}
	switch s.b[s.i] {
	case '{':
		return s.object(t)
	case '[':
		s.i++
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for {
			s.ws()
			if s.i < len(s.b) && s.b[s.i] == ']' {
				s.i++
				return nil
			}
			if err := s.value(elem); err != nil {
				return err
			}
			s.ws()
			if s.i < len(s.b) && s.b[s.i] == ',' {
				s.i++
			}
		}
	case '"':
		_, err := s.str()
		return err
	default: // a number, true, false or null
		for s.i < len(s.b) && !strings.ContainsRune(",}] \t\r\n", rune(s.b[s.i])) {
			s.i++
		}
		return nil
	}
}

func (s *keyScanner) object(t reflect.Type) error {
	s.i++ // '{'
	fields := jsonFields(t)
	var seenBuf [8][]byte
	seen := seenBuf[:0]
	for {
		s.ws()
		if s.i >= len(s.b) {
			return errMalformed
		}
		if s.b[s.i] == '}' {
			s.i++
			return nil
		}
		key, err := s.str()
		if err != nil {
			return err
		}
		for _, k := range seen {
			if bytes.Equal(k, key) {
				return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: field %s appears twice", quoteShort(string(key)))
			}
		}
		seen = append(seen, key)
		var ft reflect.Type
		if fields != nil {
			var ok bool
			if ft, ok = fields[string(key)]; !ok {
				return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: unknown field %s", quoteShort(string(key)))
			}
		} else if t != nil && t.Kind() == reflect.Map {
			ft = t.Elem()
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return errMalformed
		}
		s.i++
		if err := s.value(ft); err != nil {
			return err
		}
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ',' {
			s.i++
		}
	}
}

// str reads the string at s.i and returns its value.
func (s *keyScanner) str() ([]byte, error) {
	start := s.i
	s.i++ // '"'
	escaped := false
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			s.i++
			raw := s.b[start:s.i]
			if !escaped {
				return raw[1 : len(raw)-1], nil
			}
			var v string
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, errMalformed
			}
			return []byte(v), nil
		}
		s.i++
	}
	return nil, errMalformed
}

var errMalformed = Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: malformed JSON")

// fieldCache holds jsonFields' answer per type.
var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps the JSON names of struct type t's fields (promoted ones
// included) to their types; nil when t is not a struct, or is one that
// decodes itself (time.Time).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if t == nil || t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return nil
	}
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, v := range jsonFields(f.Type) { // promoted, as encoding/json does
				fields[k] = v
			}
			continue
		}
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	fieldCache.Store(t, fields)
	return fields
}

// maxQuotedKey bounds how much of a caller's key an error message quotes:
// a message travels in the reply, its header, the stored outcome and logs.
const maxQuotedKey = 32

// quoteShort quotes at most a short prefix of s.
func quoteShort(s string) string {
	if len(s) <= maxQuotedKey {
		return strconv.Quote(s)
	}
	cut := maxQuotedKey
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}
