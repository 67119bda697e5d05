// Package dns stands in for lego's providers/dns in the bundle's Traefik build, which carries no
// DNS-01 provider (bundle/ingress/go.mod says why). Certificates by the HTTP-01 and TLS-ALPN-01
// challenges are unaffected; a resolver configured with a DNS challenge fails with this error.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName refuses every provider name.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("DNS challenge provider %q: this Traefik build carries no DNS-01 providers; use the HTTP-01 or TLS-ALPN-01 challenge", name)
}
