// Package rollback reverts a Pulumi stack to its last good update: it
// reads the stack's update history, chooses the update to go back to,
// restores that update's configuration (the image tag among it) and runs
// `up`. A stack revert, not a rebuild: what was deployed then is what the
// configuration then describes, and the restored configuration turns
// reuseImage on so that `up`, which runs the program of the current
// checkout, deploys the image already in the registry under the old tag
// instead of building the current code.
package rollback

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Update is one entry of `pulumi stack history --json --show-secrets`. It
// follows the CLI's JSON rather than auto.UpdateSummary, which drops
// objectValue, the parsed form of structured config (lists, maps) that
// restoring needs.
//
// Pulumi Cloud numbers a stack's updates (version 1, 2, …); a self-managed
// ("DIY") backend (`pulumi login --local`, file://, s3://) gives every
// update version 0. Number is what identifies an update on either: see
// [Update.Number].
type Update struct {
	Version         int                    `json:"version"`
	Kind            string                 `json:"kind"`
	StartTime       string                 `json:"startTime"`
	EndTime         *string                `json:"endTime,omitempty"`
	Message         string                 `json:"message"`
	Environment     map[string]string      `json:"environment,omitempty"`
	Config          map[string]ConfigValue `json:"config"`
	Result          string                 `json:"result,omitempty"`
	ResourceChanges map[string]int         `json:"resourceChanges,omitempty"`

	// Number identifies the update in its stack's history: its Version
	// where the backend numbers updates, and on a backend that does not
	// (every Version 0), its place in the history, 1 for the oldest. A
	// stack's history only grows at its newest end, so that place is as
	// stable as a version (unless someone deletes history files by hand),
	// and it is the version Pulumi Cloud would have given the update.
	// Choose and LatestNumber set it (see numbered).
	Number int `json:"-"`
}

// ConfigValue is one configuration value as the CLI prints it, both in the
// history and in `pulumi config --json`, the format `config set-all --json`
// reads back.
type ConfigValue struct {
	// Value is the plaintext (secrets too, with --show-secrets); nil when
	// the history was read without the secrets provider.
	Value *string `json:"value,omitempty"`
	// ObjectValue is set for structured values; Value then holds its JSON.
	ObjectValue any  `json:"objectValue,omitempty"`
	Secret      bool `json:"secret"`
}

// Kinds and results of updates, as the CLI names them.
const (
	KindUpdate  = "update"
	KindDestroy = "destroy"

	ResultSucceeded  = "succeeded"
	ResultFailed     = "failed"
	ResultInProgress = "in-progress"
)

// undecryptable is what the CLI prints for a secret it could not decrypt.
const undecryptable = "ERROR_UNABLE_TO_DECRYPT"

// ParseHistory decodes the CLI's history JSON, newest update first.
func ParseHistory(b []byte) ([]Update, error) {
	var h []Update
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("stack history is not the JSON `pulumi stack history --json` prints: %w", err)
	}
	sortNewestFirst(h)
	return h, nil
}

// sortNewestFirst orders a history by version, newest first. A history
// without versions keeps its order, which is the CLI's: newest first (a
// self-managed backend lists its history files by name, which is the time
// each was written).
func sortNewestFirst(h []Update) {
	sort.SliceStable(h, func(i, j int) bool { return h[i].Version > h[j].Version })
}

// numbered returns a copy of a stack's whole history, newest first, with
// each update's Number set: its version, or where the backend gives none
// (every version 0), its place counted from the oldest.
func numbered(history []Update) []Update {
	h := append([]Update(nil), history...)
	sortNewestFirst(h)
	versioned := slices.ContainsFunc(h, func(u Update) bool { return u.Version != 0 })
	for i := range h {
		h[i].Number = h[i].Version
		if !versioned {
			h[i].Number = len(h) - i
		}
	}
	return h
}

// Label names the update for the operator: "update 7" where the backend
// numbers updates; on a self-managed backend, whose `pulumi stack history`
// shows every update as version 0, "update #3 of <start time>", #3 being
// its place in the history counted from the oldest.
func (u Update) Label() string {
	switch {
	case u.Version != 0:
		return fmt.Sprintf("update %d", u.Version)
	case u.Number != 0:
		return fmt.Sprintf("update #%d of %s", u.Number, u.StartTime)
	default:
		return "the update of " + u.StartTime
	}
}

// number is the update's number where its start time is shown or was
// already named: "7", or "#3" on a backend without versions.
func number(u Update) string {
	if u.Version == 0 {
		return fmt.Sprintf("#%d", u.Number)
	}
	return strconv.Itoa(u.Version)
}

// ref is the update in a rollback's message and in lists: "v7", or "#3"
// on a backend without versions.
func (u Update) ref() string {
	if u.Version == 0 {
		return fmt.Sprintf("#%d", u.Number)
	}
	return fmt.Sprintf("v%d", u.Version)
}

// short is ref with, on a backend without versions, the start time that
// tells the operator which update it is.
func (u Update) short() string {
	if u.Version == 0 {
		return fmt.Sprintf("#%d of %s", u.Number, u.StartTime)
	}
	return u.ref()
}

// Message is the update message a rollback's `up` carries. Choose reads it
// back to know which update a later rollback must not return to. from and
// to are numbered updates of one history.
func Message(stack string, from, to Update) string {
	return fmt.Sprintf("rollback of %s: %s -> %s (restores the configuration of %s)", stack, from.ref(), to.ref(), to.Label())
}

var messageRE = regexp.MustCompile(`^rollback of \S+: [v#](\d+) -> [v#](\d+)\b`)

// message is the update's message as it was given. The Automation API passes
// `up --message=%q`, with Go quoting, and the CLI records the quotes: the
// history holds a rollback's message as "\"rollback of dev: …\"".
func (u Update) message() string {
	if len(u.Message) >= 2 && strings.HasPrefix(u.Message, `"`) && strings.HasSuffix(u.Message, `"`) {
		if m, err := strconv.Unquote(u.Message); err == nil {
			return m
		}
	}
	return u.Message
}

// rollback returns, if u is a rollback's update, the numbers of the update
// it reverted and of the one whose configuration it restored.
func (u Update) rollback() (from, to int, ok bool) {
	m := messageRE.FindStringSubmatch(u.message())
	if m == nil {
		return 0, 0, false
	}
	from, err1 := strconv.Atoi(m[1])
	to, err2 := strconv.Atoi(m[2])
	return from, to, err1 == nil && err2 == nil
}

// LatestNumber is the [Update.Number] of the newest operation in a stack's
// whole history, of any kind (update, refresh, destroy…), or 0 for a stack
// with none: its version where the backend numbers updates, and on a
// self-managed backend, whose versions are all 0, the count of operations
// in the history. Either only grows, so a deploy that notes it before its
// `up` can tell afterwards whether the `up` recorded anything (see
// [RunAfter]).
func LatestNumber(history []Update) int {
	if len(history) == 0 {
		return 0
	}
	return numbered(history)[0].Number
}

// gitHead is the commit the update ran from, as the CLI records it, or "".
func (u Update) gitHead() string { return u.Environment["git.head"] }

// ReuseImageKey is the project's config key that makes `up` deploy the
// image the registry holds under imageTag instead of building the checkout.
const ReuseImageKey = "relaygate:reuseImage"

const imageTagKey = "relaygate:imageTag"

// accessKeys are the operator's own settings, not the deployment's: the
// network that may reach the hosts and the key that logs in. Whoever ran
// the update being restored (a colleague on a laptop) may have had others,
// and restoring theirs would lock out whoever rolls back (CI on its runner)
// and, for a different key, replace every host. A rollback keeps them as
// they are, and they do not make two configurations differ. operatorCidr
// is the key operatorCidrs replaced: an update from before the change must
// not bring it back (the program refuses it).
var accessKeys = []string{"relaygate:operatorCidrs", "relaygate:sshPublicKey", "relaygate:operatorCidr"}

// keepAccess makes cfg hold the access settings current has (or lack them
// where current does).
func keepAccess(cfg, current map[string]ConfigValue) {
	for _, k := range accessKeys {
		if v, ok := current[k]; ok {
			cfg[k] = v
		} else {
			delete(cfg, k)
		}
	}
}

// restored is the configuration a rollback writes: the target's, with
// reuseImage on whatever the target had, since the target itself was most
// likely a deploy that built its image.
func restored(target map[string]ConfigValue) map[string]ConfigValue {
	cfg := make(map[string]ConfigValue, len(target)+1)
	for k, v := range target {
		cfg[k] = v
	}
	on := "true"
	cfg[ReuseImageKey] = ConfigValue{Value: &on}
	return cfg
}

// sameConfig reports whether two configurations deploy the same thing.
// reuseImage does not count: it says whether the image of imageTag was built
// or found, and tags are immutable, so a rollback (reuseImage on) and the
// deploy it restored (off) are the same configuration.
func sameConfig(a, b map[string]ConfigValue) bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	delete(keys, ReuseImageKey)
	for _, k := range accessKeys {
		delete(keys, k)
	}
	for k := range keys {
		va, inA := a[k]
		vb, inB := b[k]
		if !inA || !inB || va.Secret != vb.Secret || va.text() != vb.text() {
			return false
		}
	}
	return true
}

func (v ConfigValue) text() string {
	if v.Value == nil {
		return "\x00unknown"
	}
	return *v.Value
}
