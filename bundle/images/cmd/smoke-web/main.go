// Command smoke-web is the small program that verify deploys on a new cluster. By default it is a
// web server that answers every request with the pod's name, so a check can tell which pod
// answered. The same binary is also the checks' client inside pods, where the image has no shell:
//
//	smoke-web [-listen :8080]   serve
//	smoke-web -get URL          print the body of URL (exit 1 on failure)
//	smoke-web -lookup NAME      print NAME's addresses, one per line, from the pod's resolver
//	smoke-web -write FILE -text T   write T to FILE and sync it (a volume check's first pod)
//	smoke-web -read FILE        print FILE (the same check's second pod)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

// version is set at build time (-X main.version=...).
var version = "dev"

func main() {
	listen := flag.String("listen", ":8080", "address to listen on")
	get := flag.String("get", "", "fetch this URL, print its body and exit")
	lookup := flag.String("lookup", "", "resolve this name, print its addresses and exit")
	write := flag.String("write", "", "write -text to this file, sync it and exit")
	text := flag.String("text", "", "what -write writes")
	read := flag.String("read", "", "print this file and exit")
	timeout := flag.Duration("timeout", 5*time.Second, "timeout of -get and -lookup")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	switch {
	case *showVersion:
		fmt.Println("smoke-web", version)
	case *get != "":
		os.Exit(fetch(*get, *timeout))
	case *lookup != "":
		os.Exit(resolve(*lookup, *timeout))
	case *write != "":
		os.Exit(writeFile(*write, *text))
	case *read != "":
		os.Exit(readFile(*read))
	default:
		serve(*listen)
	}
}

func fetch(url string, timeout time.Duration) int {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke-web:", err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke-web:", err)
		return 1
	}
	fmt.Print(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "smoke-web: HTTP status", resp.StatusCode)
		return 1
	}
	return 0
}

func resolve(name string, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke-web:", err)
		return 1
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return 0
}

func writeFile(path, text string) int {
	f, err := os.Create(path)
	if err == nil {
		_, err = f.WriteString(text)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke-web:", err)
		return 1
	}
	return 0
}

func readFile(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke-web:", err)
		return 1
	}
	fmt.Print(string(data))
	return 0
}

func serve(listen string) {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "smoke-web %s\n", name)
	})
	server := &http.Server{
		Addr:              listen,
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
	}
	log.Printf("smoke-web %s listening on %s", version, listen)
	log.Fatal(server.ListenAndServe())
}
