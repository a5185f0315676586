package upstreamsim

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"net/http"
	"strconv"

	"github.com/tidwall/gjson"
)

// maxEmbeddingDims bounds the request's "dimensions"; OpenAI's largest model
// has 3072.
const maxEmbeddingDims = 8192

// embeddingsRequest is what the simulator needs from an embeddings request.
type embeddingsRequest struct {
	modelRequest
	inputs []gjson.Result // each a string or an array of token ids
	dims   int
	base64 bool
}

func (s *Server) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	mr, ok := s.admit(w, r)
	if !ok {
		return
	}
	req := embeddingsRequest{modelRequest: mr}
	if !s.parseEmbeddings(w, &req) {
		return
	}
	if !s.simulate(w, r, &req.modelRequest) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	*bp = appendEmbeddings(*bp, &req)
	s.answer(w, *bp)
}

// parseEmbeddings reads "input" as OpenAI does: a string, an array of token
// ids (one input), or an array of strings or of token-id arrays (one input
// each). It answers 400 itself when the request is wrong.
func (s *Server) parseEmbeddings(w http.ResponseWriter, req *embeddingsRequest) bool {
	const badInput = "'input' must be a non-empty string, array of strings, " +
		"array of token ids, or array of token-id arrays."
	input := req.doc.Get("input")
	switch {
	case input.Type == gjson.String:
		req.inputs = []gjson.Result{input}
	case input.IsArray():
		items := input.Array()
		if len(items) == 0 {
			s.rejectBadRequest(w, "input", badInput)
			return false
		}
		if items[0].Type == gjson.Number {
			req.inputs = []gjson.Result{input}
			break
		}
		for _, it := range items {
			if it.Type != gjson.String && !it.IsArray() {
				s.rejectBadRequest(w, "input", badInput)
				return false
			}
		}
		req.inputs = items
	default:
		s.rejectBadRequest(w, "input", badInput)
		return false
	}

	req.dims = req.cfg.EmbeddingDims
	if d := req.doc.Get("dimensions"); d.Exists() && d.Type != gjson.Null {
		if d.Type != gjson.Number || d.Int() < 1 || d.Int() > maxEmbeddingDims {
			s.rejectBadRequest(w, "dimensions", "Invalid 'dimensions': expected an integer from 1 to "+
				strconv.Itoa(maxEmbeddingDims)+".")
			return false
		}
		req.dims = int(d.Int())
	}

	switch f := req.doc.Get("encoding_format"); f.String() {
	case "", "float":
	case "base64":
		req.base64 = true
	default:
		s.rejectBadRequest(w, "encoding_format", "Invalid 'encoding_format': expected 'float' or 'base64'.")
		return false
	}
	return true
}

// appendEmbeddings appends the whole list of embedding objects.
func appendEmbeddings(dst []byte, req *embeddingsRequest) []byte {
	dst = append(dst, `{"object":"list","data":[`...)
	tokens := 0
	for i, in := range req.inputs {
		text, n := in.Str, estimateTokens(len(in.Str))
		if in.IsArray() {
			// Token ids: the raw JSON is as good a key as any, and each id
			// is one token.
			text, n = in.Raw, 0
			in.ForEach(func(_, _ gjson.Result) bool { n++; return true })
		}
		tokens += n
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"object":"embedding","index":`...)
		dst = strconv.AppendInt(dst, int64(i), 10)
		dst = append(dst, `,"embedding":`...)
		dst = appendVector(dst, fnvOffset.add(req.model).add(text), req.dims, req.base64)
		dst = append(dst, '}')
	}
	dst = append(dst, `],"model":`...)
	dst = appendJSONString(dst, req.model)
	dst = append(dst, `,"usage":{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(tokens), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(tokens), 10)
	return append(dst, "}}"...)
}

// appendVector appends a deterministic unit vector of dims float32s, as a
// JSON array or, with b64, as the base64 of the little-endian floats, the two
// encodings OpenAI offers. The vector is generated twice from its seed, once
// for its norm and once to write it, so no scratch slice is needed.
func appendVector(dst []byte, h fnv1a, dims int, b64 bool) []byte {
	component := func(rng *splitMix) float64 { return rng.float()*2 - 1 }
	rng := newSplitMix(uint64(h), 0)
	var sum float64
	for range dims {
		c := component(&rng)
		sum += c * c
	}
	norm := math.Sqrt(sum)
	if norm == 0 {
		norm = 1
	}

	rng = newSplitMix(uint64(h), 0)
	if b64 {
		enc := make([]byte, 0, 4*dims)
		for range dims {
			enc = binary.LittleEndian.AppendUint32(enc, math.Float32bits(float32(component(&rng)/norm)))
		}
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, enc)
		return append(dst, '"')
	}
	dst = append(dst, '[')
	for i := range dims {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendFloat(dst, float64(float32(component(&rng)/norm)), 'f', -1, 32)
	}
	return append(dst, ']')
}
