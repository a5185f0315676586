package reliability

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestAuth: a request without the right key gets 401 in OpenAI's shape on
// every API route, and never reaches an upstream.
func TestAuth(t *testing.T) {
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	const other = "sk-reliability-other-key-9876543210"
	spec := viaSim(sim)
	spec.keys = []string{clientKey, other}
	gw := startGateway(t, spec.yaml(), nil)
	c := newClient(t, 1)
	cases := []struct {
		name string
		auth []string // Authorization header values, in order
		want int
	}{
		{"no header", nil, 401},
		{"empty", []string{""}, 401},
		{"scheme only", []string{"Bearer"}, 401},
		{"scheme and a space", []string{"Bearer "}, 401},
		{"scheme and spaces", []string{"Bearer     "}, 401},
		{"no scheme", []string{clientKey}, 401},
		{"Basic", []string{"Basic " + clientKey}, 401},
		{"another scheme", []string{"Token " + clientKey}, 401},
		{"no space after the scheme", []string{"Bearer" + clientKey}, 401},
		{"wrong key", []string{"Bearer sk-reliability-wrong-key-0123456789"}, 401},
		{"key one character short", []string{"Bearer " + clientKey[:len(clientKey)-1]}, 401},
		{"key with a character more", []string{"Bearer " + clientKey + "0"}, 401},
		{"key with a prefix", []string{"Bearer x" + clientKey}, 401},
		{"key in another case", []string{"Bearer " + strings.ToUpper(clientKey)}, 401},
		{"two keys in one header", []string{"Bearer " + clientKey + " " + other}, 401},
		{"wrong key first, right key second", []string{"Bearer sk-reliability-wrong-key-0123456789", "Bearer " + clientKey}, 401},
		{"right key", []string{"Bearer " + clientKey}, 200},
		{"the other right key", []string{"Bearer " + other}, 200},
		{"scheme in lower case", []string{"bearer " + clientKey}, 200},
	}
	routes := []struct{ method, path, body string }{
		{"POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}]}`},
		{"POST", "/v1/chat/completions/stream", `{"model":"m","messages":[{"role":"user","content":"x"}]}`},
		{"POST", "/v1/embeddings", `{"model":"m","input":"x"}`},
		{"GET", "/v1/models", ""},
	}
	answered := 0
	for _, tc := range cases {
		for _, rt := range routes {
			t.Run(tc.name+" "+rt.path, func(t *testing.T) {
				req := mustRequest(t, rt.method, gw.URL+rt.path, rt.body)
				for _, a := range tc.auth {
					req.Header.Add("Authorization", a)
				}
				got := do(c, req)
				if got.status != tc.want {
					t.Fatalf("status %d, want %d: %s", got.status, tc.want, got)
				}
				if tc.want == http.StatusOK {
					if rt.method == "POST" {
						answered++
					}
					return
				}
				if e, err := openAIError(got); err != nil || e.Code != "invalid_api_key" {
					t.Errorf("want invalid_api_key in OpenAI's shape (%v): %s", err, got)
				}
			})
		}
	}
	st := sim.Stats()
	if got := st.Requests[upstreamsim.EndpointChatCompletions] + st.Requests[upstreamsim.EndpointEmbeddings]; got != uint64(answered) {
		t.Errorf("the upstream was asked %d times, want only the %d authorised requests", got, answered)
	}
	// Liveness, readiness and metrics stay open for probes and scrapers
	// when no admin key is set.
	for _, path := range []string{"/health", "/ready", "/metrics"} {
		if got := do(c, mustRequest(t, "GET", gw.URL+path, "")); got.status != http.StatusOK {
			t.Errorf("GET %s without a key: %s", path, got)
		}
	}
}

// TestAdminKey: with admin.key set, /metrics needs it (a client key is not
// enough), /health without it says only the status, and /ready stays open
// for load balancers.
func TestAdminKey(t *testing.T) {
	sim := startSim(t, simAnswer(upstreamsim.Config{}))
	const adminKey = "sk-reliability-admin-key-5555555555"
	spec := viaSim(sim)
	spec.extra = fmt.Sprintf("admin: {key: %q}\n", adminKey)
	gw := startGateway(t, spec.yaml(), nil)
	c := newClient(t, 1)
	get := func(path, key string) reply {
		req := mustRequest(t, "GET", gw.URL+path, "")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		return do(c, req)
	}
	for _, key := range []string{"", clientKey, "sk-reliability-wrong-admin-key-000", adminKey + "x"} {
		got := get("/metrics", key)
		if got.status != http.StatusUnauthorized || bytes.Contains(got.body, []byte("relaygate_")) {
			t.Errorf("/metrics with key %q: %s", key, got)
		} else if _, err := openAIError(got); err != nil {
			t.Error(err)
		}
		if h := get("/health", key); h.status != http.StatusOK || bytes.Contains(h.body, []byte("upstreams")) {
			t.Errorf("/health with key %q shows details: %s", key, h)
		}
	}
	if got := get("/metrics", adminKey); got.status != http.StatusOK || !bytes.Contains(got.body, []byte("relaygate_requests_total")) {
		t.Errorf("/metrics with the admin key: %s", got)
	}
	if got := get("/health", adminKey); !bytes.Contains(got.body, []byte(`"upstreams"`)) {
		t.Errorf("/health with the admin key has no details: %s", got)
	}
	if got := get("/ready", ""); got.status != http.StatusOK {
		t.Errorf("/ready without a key: %s", got)
	}
}

// TestKeysComparedInConstantTime reads the gateway's source: client keys
// and the admin key are kept as fixed-size SHA-256 digests and compared
// with crypto/subtle.ConstantTimeCompare (against every configured key,
// with no early exit) and no ordinary comparison on the way. A statistical
// timing test would be flaky on a shared machine; the code is what can be
// checked.
func TestKeysComparedInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join("..", "gateway", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("gateway sources: %v", err)
	}
	funcs := map[string]*ast.FuncDecl{"authorize": nil, "adminAuthorized": nil}
	// Every plain function of the package, so the check follows the auth
	// methods into the helpers they call.
	helpers := map[string]*ast.FuncDecl{}
	fields := map[string]*ast.Field{"keys": nil, "adminKey": nil}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncDecl:
				if _, ok := funcs[n.Name.Name]; ok && n.Recv != nil {
					funcs[n.Name.Name] = n
				}
				if n.Recv == nil {
					helpers[n.Name.Name] = n
				}
			case *ast.TypeSpec:
				if st, ok := n.Type.(*ast.StructType); ok && n.Name.Name == "state" {
					for _, fl := range st.Fields.List {
						for _, name := range fl.Names {
							if _, ok := fields[name.Name]; ok {
								fields[name.Name] = fl
							}
						}
					}
				}
			}
			return true
		})
	}
	for name, fl := range fields {
		// Fixed-size digests: every comparison takes the same time
		// whatever the length of the key sent.
		if fl == nil {
			t.Errorf("state.%s not found: update this test with the gateway's auth code", name)
		} else if got := typeString(fl.Type); got != "[][sha256.Size]byte" {
			t.Errorf("state.%s is %s, want [][sha256.Size]byte", name, got)
		}
	}
	for name, fn := range funcs {
		if fn == nil {
			t.Errorf("%s not found: update this test with the gateway's auth code", name)
			continue
		}
		checkConstantTime(t, fset, fn, helpers)
	}
}

// checkConstantTime fails unless fn, with the package functions it calls,
// hashes what it compares with SHA-256 and compares it only with
// subtle.ConstantTimeCompare.
func checkConstantTime(t *testing.T, fset *token.FileSet, fn *ast.FuncDecl, helpers map[string]*ast.FuncDecl) {
	t.Helper()
	calls := map[string]int{}
	seen := map[*ast.FuncDecl]bool{}
	queue := []*ast.FuncDecl{fn}
	for len(queue) > 0 {
		body := queue[0]
		queue = queue[1:]
		if seen[body] {
			continue
		}
		seen[body] = true
		inspectAuth(t, fset, fn.Name.Name, body, calls, func(name string) {
			if h, ok := helpers[name]; ok {
				queue = append(queue, h)
			}
		})
	}
	for _, want := range []string{"sha256.Sum256", "subtle.ConstantTimeCompare"} {
		if calls[want] == 0 {
			t.Errorf("%s does not call %s", fn.Name.Name, want)
		}
	}
	for _, banned := range []string{"bytes.Equal", "bytes.Compare", "strings.Compare", "reflect.DeepEqual", "slices.Equal"} {
		if calls[banned] > 0 {
			t.Errorf("%s calls %s, which returns at the first difference", fn.Name.Name, banned)
		}
	}
}

// inspectAuth counts the package-qualified calls in one function body,
// reports comparisons and early loop exits that could leak timing, and
// hands calls to package functions to follow.
func inspectAuth(t *testing.T, fset *token.FileSet, name string, fn *ast.FuncDecl, calls map[string]int, follow func(string)) {
	t.Helper()
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			switch f := n.Fun.(type) {
			case *ast.SelectorExpr:
				if pkg, ok := f.X.(*ast.Ident); ok {
					calls[pkg.Name+"."+f.Sel.Name]++
				}
			case *ast.Ident:
				follow(f.Name)
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				// Only comparisons with a number (a length, the match
				// flag) are allowed: anything else may compare key bytes.
				if !isIntLit(n.X) && !isIntLit(n.Y) {
					t.Errorf("%s compares with %s at %s", name, n.Op, fset.Position(n.Pos()))
				}
			}
		case *ast.RangeStmt:
			ast.Inspect(n.Body, func(m ast.Node) bool {
				switch m.(type) {
				case *ast.BranchStmt, *ast.ReturnStmt:
					t.Errorf("%s: the loop over keys can end early at %s", name, fset.Position(m.Pos()))
				}
				return true
			})
		}
		return true
	})
}

func isIntLit(e ast.Expr) bool {
	l, ok := e.(*ast.BasicLit)
	return ok && l.Kind == token.INT
}

// typeString renders a type expression as source.
func typeString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return typeString(e.X) + "." + e.Sel.Name
	case *ast.ArrayType:
		if e.Len == nil {
			return "[]" + typeString(e.Elt)
		}
		return "[" + typeString(e.Len) + "]" + typeString(e.Elt)
	}
	return "?"
}
