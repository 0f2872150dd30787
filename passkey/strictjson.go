package passkey

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
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
	if err := checkKeys(dec, reflect.TypeOf(v)); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body must hold exactly one JSON object")
	}
	dec = json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: %s", describeJSONError(err))
	}
	return nil
}

// checkKeys reads one JSON value from dec and checks every object in it
// against t: each key once, and, where t is a struct, each key exactly a
// field's JSON name.
func checkKeys(dec *json.Decoder, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: malformed JSON")
	}
	switch tok {
	case json.Delim('{'):
		fields := jsonFields(t)
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: malformed JSON")
			}
			key := k.(string)
			if seen[key] {
				return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: field %s appears twice", quoteShort(key))
			}
			seen[key] = true
			var ft reflect.Type
			if fields != nil {
				var ok bool
				if ft, ok = fields[key]; !ok {
					return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: unknown field %s", quoteShort(key))
				}
			} else if t != nil && t.Kind() == reflect.Map {
				ft = t.Elem()
			}
			if err := checkKeys(dec, ft); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
	case json.Delim('['):
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for dec.More() {
			if err := checkKeys(dec, et); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
	}
	if err != nil {
		return Errorf(CodeInvalidArgument, IDBodyInvalid, "the body is not a valid request: malformed JSON")
	}
	return nil
}

// jsonFields maps the JSON names of struct type t's fields to their types;
// nil when t is not a struct (or is one that decodes itself, as time.Time).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if t == nil || t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return nil
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
