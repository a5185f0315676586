package network

import (
	"net/netip"
	"testing"
)

func TestSubnet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		vpc   string
		index int
		want  string
	}{
		{"10.40.0.0/16", 0, "10.40.0.0/20"},
		{"10.40.0.0/16", 1, "10.40.16.0/20"},
		{"10.40.0.0/16", 8, "10.40.128.0/20"},
		{"10.40.0.0/16", 15, "10.40.240.0/20"},
		{"192.168.4.0/24", 3, "192.168.4.48/28"},
		{"172.16.0.0/12", 2, "172.18.0.0/16"},
	}
	for _, tt := range tests {
		got, err := Subnet(netip.MustParsePrefix(tt.vpc), tt.index)
		if err != nil || got.String() != tt.want {
			t.Errorf("Subnet(%s, %d) = %s, %v; want %s", tt.vpc, tt.index, got, err, tt.want)
		}
	}
	for _, bad := range []struct {
		vpc   string
		index int
	}{{"10.40.0.0/25", 0}, {"10.40.0.0/16", 16}, {"10.40.0.0/16", -1}, {"2001:db8::/48", 0}} {
		if got, err := Subnet(netip.MustParsePrefix(bad.vpc), bad.index); err == nil {
			t.Errorf("Subnet(%s, %d) = %s, want an error", bad.vpc, bad.index, got)
		}
	}
}

func TestSubnetsDoNotOverlap(t *testing.T) {
	t.Parallel()
	vpc := netip.MustParsePrefix("10.41.0.0/16")
	var all []netip.Prefix
	for i := range 16 {
		p, err := Subnet(vpc, i)
		if err != nil {
			t.Fatal(err)
		}
		if !vpc.Contains(p.Addr()) {
			t.Errorf("subnet %s is outside %s", p, vpc)
		}
		for _, q := range all {
			if p.Overlaps(q) {
				t.Errorf("subnets %s and %s overlap", p, q)
			}
		}
		all = append(all, p)
	}
}
