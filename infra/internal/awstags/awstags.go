// Package awstags builds the tags every AWS resource of a stack carries.
package awstags

import "github.com/pulumi/pulumi/sdk/v3/go/pulumi"

// Named is Name, the name the AWS console shows, plus the stack's tags
// (which win, should they hold a Name).
func Named(name string, tags map[string]string) pulumi.StringMap {
	m := pulumi.StringMap{"Name": pulumi.String(name)}
	for k, v := range tags {
		m[k] = pulumi.String(v)
	}
	return m
}
