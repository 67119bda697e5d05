// Package ext holds the extension points that Traefik's dynamic configuration embeds in its HTTP
// configuration and in each router. This build extends neither, so both are empty.
package ext

// HTTP is embedded in Traefik's HTTP configuration.
type HTTP struct{}

// Router is embedded in each of Traefik's HTTP routers.
type Router struct{}
