// Command sigil-ferretdb runs FerretDB, a MongoDB wire-protocol server, on
// an SQLite folder. The test suite and the demo use it where no MongoDB
// server is installed; it embeds FerretDB rather than building its own
// command, whose version stamp only FerretDB's release tooling writes.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data", "", "folder for the SQLite files (required)")
	verbose := flag.Bool("verbose", false, "log every connection and command")
	flag.Parse()

	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "sigil-ferretdb: -data is required")
		os.Exit(2)
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sigil-ferretdb: %v\n", err)
		os.Exit(2)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "sigil-ferretdb: %v\n", err)
		os.Exit(1)
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "sigil-ferretdb: %v\n", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	go func() {
		// MongoDBURI waits until the listener is up; the line tells a
		// parent process that connections are now accepted.
		fmt.Printf("ready %s\n", f.MongoDBURI())
	}()

	if err := f.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "sigil-ferretdb: %v\n", err)
		os.Exit(1)
	}
}
