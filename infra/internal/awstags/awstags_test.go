package awstags

import (
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func TestNamed(t *testing.T) {
	got := Named("relaygate-dev-vpc", map[string]string{"Project": "relaygate", "Stack": "dev"})
	want := pulumi.StringMap{"Name": pulumi.String("relaygate-dev-vpc"), "Project": pulumi.String("relaygate"), "Stack": pulumi.String("dev")}
	if len(got) != len(want) {
		t.Fatalf("Named = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Named[%s] = %v, want %v", k, got[k], v)
		}
	}
}
