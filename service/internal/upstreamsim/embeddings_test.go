package upstreamsim

import (
	"encoding/json"
	"math"
	"net/http"
	"reflect"
	"testing"

	openai "github.com/sashabaranov/go-openai"
)

func TestEmbeddings(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		req        openai.EmbeddingRequestConverter
		wantCount  int
		wantDims   int
		wantTokens int
	}{
		{
			name:      "one string",
			req:       openai.EmbeddingRequest{Model: "text-embedding-3-small", Input: "hello world"},
			wantCount: 1, wantDims: DefaultEmbeddingDims, wantTokens: 3, // ceil(11/4)
		},
		{
			name:      "several strings, configured dims",
			cfg:       Config{EmbeddingDims: 32},
			req:       openai.EmbeddingRequestStrings{Model: "e", Input: []string{"a", "bb", "cccc", "ddddd"}},
			wantCount: 4, wantDims: 32, wantTokens: 1 + 1 + 1 + 2,
		},
		{
			name:      "token arrays",
			req:       openai.EmbeddingRequestTokens{Model: "e", Input: [][]int{{1, 2, 3}, {4}}},
			wantCount: 2, wantDims: DefaultEmbeddingDims, wantTokens: 4,
		},
		{
			name:      "one token array",
			req:       openai.EmbeddingRequest{Model: "e", Input: []int{5, 6, 7}},
			wantCount: 1, wantDims: DefaultEmbeddingDims, wantTokens: 3,
		},
		{
			name:      "requested dimensions",
			req:       openai.EmbeddingRequestStrings{Model: "e", Input: []string{"x"}, Dimensions: 5},
			wantCount: 1, wantDims: 5, wantTokens: 1,
		},
		{
			name: "base64",
			req: openai.EmbeddingRequestStrings{Model: "e", Input: []string{"x", "y"},
				EncodingFormat: openai.EmbeddingEncodingFormatBase64},
			wantCount: 2, wantDims: DefaultEmbeddingDims, wantTokens: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim, ts := startSim(t, tc.cfg)
			client := newClient(ts, "k")
			resp, err := client.CreateEmbeddings(testContext(t), tc.req)
			if err != nil {
				t.Fatalf("CreateEmbeddings: %v", err)
			}
			if resp.Object != "list" || resp.Model == "" || len(resp.Data) != tc.wantCount {
				t.Fatalf("object/model/count = %q/%q/%d, want list/…/%d", resp.Object, resp.Model, len(resp.Data), tc.wantCount)
			}
			for i, e := range resp.Data {
				if e.Object != "embedding" || e.Index != i || len(e.Embedding) != tc.wantDims {
					t.Errorf("data[%d] = object %q index %d dims %d", i, e.Object, e.Index, len(e.Embedding))
				}
				var sum float64
				for _, v := range e.Embedding {
					sum += float64(v) * float64(v)
				}
				if math.Abs(math.Sqrt(sum)-1) > 1e-4 {
					t.Errorf("data[%d] norm = %v, want 1", i, math.Sqrt(sum))
				}
			}
			if resp.Usage.PromptTokens != tc.wantTokens || resp.Usage.TotalTokens != tc.wantTokens {
				t.Errorf("usage = %+v, want %d tokens", resp.Usage, tc.wantTokens)
			}

			again, err := client.CreateEmbeddings(testContext(t), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(again.Data, resp.Data) {
				t.Error("the same request gave different vectors")
			}
			if got := sim.Stats().Requests[EndpointEmbeddings]; got != 2 {
				t.Errorf("embeddings requests = %d, want 2", got)
			}
		})
	}
}

// TestEmbeddingsDiffer checks that vectors depend on the input and model and
// that the float and base64 encodings carry the same numbers.
func TestEmbeddingsDiffer(t *testing.T) {
	_, ts := startSim(t, Config{})
	client := newClient(ts, "k")
	ctx := testContext(t)
	get := func(model, format string, in ...string) []openai.Embedding {
		t.Helper()
		resp, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequestStrings{
			Model: openai.EmbeddingModel(model), Input: in, EncodingFormat: openai.EmbeddingEncodingFormat(format)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Data
	}
	batch := get("e", "float", "alpha", "beta", "alpha")
	if reflect.DeepEqual(batch[0].Embedding, batch[1].Embedding) {
		t.Error("different inputs gave the same vector")
	}
	if !reflect.DeepEqual(batch[0].Embedding, batch[2].Embedding) {
		t.Error("the same input in one batch gave different vectors")
	}
	if other := get("e2", "float", "alpha"); reflect.DeepEqual(other[0].Embedding, batch[0].Embedding) {
		t.Error("another model gave the same vector")
	}
	if b64 := get("e", "base64", "alpha"); !reflect.DeepEqual(b64[0].Embedding, batch[0].Embedding) {
		t.Errorf("base64 vector %v differs from float vector %v", b64[0].Embedding, batch[0].Embedding)
	}
}

func TestEmbeddingsRawShape(t *testing.T) {
	_, ts := startSim(t, Config{EmbeddingDims: 3})
	_, body := requestOK(t, ts, http.MethodPost, "/embeddings", `{"model":"e","input":"hi"}`)
	var got struct {
		Object string `json:"object"`
		Data   []struct {
			Object    string    `json:"object"`
			Index     *int      `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
		Model string            `json:"model"`
		Usage map[string]uint64 `json:"usage"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if got.Object != "list" || got.Model != "e" || len(got.Data) != 1 || got.Data[0].Index == nil ||
		len(got.Data[0].Embedding) != 3 || got.Usage["prompt_tokens"] != 1 || got.Usage["total_tokens"] != 1 {
		t.Errorf("body = %s", body)
	}
}
