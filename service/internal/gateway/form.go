package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
)

// A transcription request is multipart/form-data: an audio file (up to
// 25 MB at OpenAI) and a few fields, the model among them. The gateway
// reads it once into the bounded body buffer (readBody, max_body_bytes),
// finds the model part in that buffer, and forwards the same bytes with
// the same boundary. A model the route renames rewrites only that part's
// value, sent as three views of the one buffer, so the file is never held
// twice.

// maxFormModel bounds the model field's value; model names are short.
const maxFormModel = 256

var (
	crlf       = []byte("\r\n")
	blankLine  = []byte("\r\n\r\n")
	closeDelim = []byte("--")
)

// parseForm reads the model of a multipart/form-data body. It reads the
// body twice, never copying it: once with mime/multipart, the parser Go
// upstreams use, for the fields' values, once by hand for where the model
// part's value lies. A body the two read differently (a quoted-printable
// model, a part only one of them finds) is refused, so the gateway never
// routes and bills one model while the upstream serves another; so is a
// body with the model field twice, as duplicate JSON keys are.
func parseForm(b []byte, contentType string) (request, *apiError) {
	req := request{streamOptionsStart: -1}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return req, errBadRequest("invalid_content_type",
			"This endpoint takes a multipart/form-data upload: send the file and fields as a form, with its boundary in the Content-Type.")
	}
	boundary := params["boundary"]
	model, n, err := formValue(b, boundary, "model")
	switch {
	case err != nil:
		return req, errBadRequest("invalid_multipart", "The multipart/form-data body could not be parsed: "+err.Error()+".")
	case n > 1:
		return req, errBadRequestParam("duplicate_key",
			"The form has the field 'model' more than once; parsers disagree on which one counts, so the gateway refuses it.", "model")
	case n == 0 || model == "":
		return req, errBadRequest("missing_model", "You must provide a model parameter.")
	}
	start, end, ok := formPart(b, boundary, "model")
	if !ok || string(b[start:end]) != model {
		return req, errBadRequestParam("invalid_multipart",
			"The form's 'model' field is encoded in a way the gateway cannot read unambiguously; send it as plain text.", "model")
	}
	req.model, req.modelStart, req.modelEnd = model, start, end
	req.formType = contentType
	return req, nil
}

// formValue reads the value of the field name with mime/multipart, and
// how many parts carry that name. The other parts, the file among them,
// are skipped through the parser's small buffer, not copied out.
func formValue(b []byte, boundary, name string) (value string, n int, err error) {
	mr := multipart.NewReader(bytes.NewReader(b), boundary)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return value, n, nil
		}
		if err != nil {
			return "", 0, fmt.Errorf("reading part: %w", err)
		}
		if p.FormName() != name {
			continue
		}
		n++
		v, err := io.ReadAll(io.LimitReader(p, maxFormModel+1))
		if err != nil {
			return "", 0, fmt.Errorf("reading field %s: %w", name, err)
		}
		if len(v) > maxFormModel {
			return "", 0, fmt.Errorf("field %s is longer than %d bytes", name, maxFormModel)
		}
		value = string(v)
	}
}

// formPart locates the raw value of the first part named name: the bytes
// between its headers' blank line and the next delimiter (RFC 7578).
func formPart(b []byte, boundary, name string) (start, end int, ok bool) {
	delim := []byte("\r\n--" + boundary)
	i := 0
	if bytes.HasPrefix(b, delim[2:]) {
		i = len(delim) - 2
	} else if j := bytes.Index(b, delim); j >= 0 {
		i = j + len(delim) // after a preamble
	} else {
		return 0, 0, false
	}
	for {
		// i is just past a delimiter: "--" closes the body; otherwise
		// transport padding, then the CRLF that ends the delimiter line.
		if bytes.HasPrefix(b[i:], closeDelim) {
			return 0, 0, false
		}
		eol := bytes.Index(b[i:], crlf)
		if eol < 0 || strings.Trim(string(b[i:i+eol]), " \t") != "" {
			return 0, 0, false
		}
		hs := i + eol + 2
		bodyStart := hs + 2 // a part without headers
		if !bytes.HasPrefix(b[hs:], crlf) {
			he := bytes.Index(b[hs:], blankLine)
			if he < 0 {
				return 0, 0, false
			}
			bodyStart = hs + he + 4
		}
		next := bytes.Index(b[bodyStart:], delim)
		if next < 0 {
			return 0, 0, false
		}
		bodyEnd := bodyStart + next
		if partName(b[hs:bodyStart]) == name {
			return bodyStart, bodyEnd, true
		}
		i = bodyEnd + len(delim)
	}
}

// partName is the form name in a part's headers.
func partName(hdr []byte) string {
	h, err := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(hdr), 256)).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return ""
	}
	disp, params, err := mime.ParseMediaType(h.Get("Content-Disposition"))
	if err != nil || disp != "form-data" {
		return ""
	}
	return params["name"]
}

// formBody returns the body to send one upstream: the client's bytes, with
// the model part's value replaced when the route renames the model. The
// replacement reads from three views of the one buffer, copying nothing.
func formBody(b []byte, req *request, model string) (body func() io.ReadCloser, size int64) {
	if model == "" || model == req.model {
		return func() io.ReadCloser { return bodyReader(b) }, int64(len(b))
	}
	head, tail := b[:req.modelStart], b[req.modelEnd:]
	return func() io.ReadCloser {
		return io.NopCloser(io.MultiReader(bytes.NewReader(head), strings.NewReader(model), bytes.NewReader(tail)))
	}, int64(len(head) + len(model) + len(tail))
}
