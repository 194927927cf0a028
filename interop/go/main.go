// dplock-peer: the seed's own Go lock (ONS dp-mongodb's dplock, over square/mongo-lock) as a
// peer of actix-mongo-lock, so the mixed-fleet tests can prove that Go and Rust services
// contending for the same resources exclude each other.
//
// It opens dplock exactly as an ONS service does: mongodb.Open with a MongoDriverConfig, then
// dplock.New(ctx, connection, family). The server is MONGODB_URI (host and port, plus
// replicaSet if the URI names one); the database is --database.
//
//	dplock-peer contend --family F --process P [--workers 4 --resources 3 --seconds 20 --hold-ms 5 --lock]
//	                    [--readers N --max-holders M]
//	dplock-peer serve   --family F [--fixed-time-id N]
//	dplock-peer bench   --family F --measure uncontended|takers|throughput (see bench.go)
//
// contend: workers take turns on resources r0..r<n-1> until the time is up (Acquire, or Lock
// with --lock), hold each for --hold-ms, Unlock, and print one line per hold:
//
//	DPLOCK-HOLD <process> <resource> <lockID> <requested_ms> <granted_ms> <lease_expires_ms> <release_sent_ms> <released_ms>
//
// With --readers N, the first N workers take square/mongo-lock's shared SLock instead (at most
// --max-holders M holders, M < 0 for no limit), trying again every 10 ms until granted or the
// time is up, and their DPLOCK-HOLD lines end with one more field, `shared`.
//
// then `DPLOCK-DONE <process> <grants> <refusals> <errors>`. Times are Unix milliseconds on this
// process's clock; the lease end is the request time plus dplock.TTL, the earliest instant the
// hold can have expired (square/mongo-lock stamps it after the request was sent).
//
// serve: one dplock.Lock driven line by line on stdin, one answer line per command, for tests
// that need a Go peer to act at a chosen moment:
//
//	lock R | acquire R   ->  LOCKED <lockID> <before_ms> <after_ms> | REFUSED <before_ms> <after_ms> | ERROR <text>
//	slock R N            ->  as lock: square/mongo-lock's SLock under dplock (a shared hold of
//	                         dplock's TTL, at most N shared holders, N < 0 for no limit)
//	unlock ID            ->  UNLOCKED <before_ms> <after_ms>   (shared holds too)
//	purge                ->  PURGED <count> [<lockID>...]   (one pass of the purger dplock.New started)
//	now                  ->  NOW <ms>
//	close                ->  CLOSED                         (dplock's Close, then the connection's)
//
// --fixed-time-id N replaces dplock.GenerateTimeID, as dplock's own tests do, so lock ids
// collide on purpose.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ONSdigital/dp-mongodb/v3/dplock"
	mongoDriver "github.com/ONSdigital/dp-mongodb/v3/mongodb"
	"github.com/ONSdigital/log.go/v2/log"
	lock "github.com/square/mongo-lock"
)

func main() {
	// dplock and dp-mongodb log to stdout by default; stdout is this program's protocol.
	log.SetDestination(os.Stderr, os.Stderr)
	if len(os.Args) < 2 {
		fail(2, "usage: dplock-peer contend|serve|bench [flags]")
	}
	var err error
	switch os.Args[1] {
	case "contend":
		err = contend(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	case "bench":
		err = bench(os.Args[2:])
	default:
		fail(2, "unknown command %q: want contend, serve or bench", os.Args[1])
	}
	if err != nil {
		fail(1, "%v", err)
	}
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "dplock-peer: "+format+"\n", args...)
	os.Exit(code)
}

// connect opens the connection an ONS service would: mongodb.Open on MONGODB_URI's host.
func connect(database string) (*mongoDriver.MongoConnection, error) {
	raw := os.Getenv("MONGODB_URI")
	if raw == "" {
		return nil, errors.New("MONGODB_URI is not set")
	}
	uri, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("MONGODB_URI %q: %w", raw, err)
	}
	config := &mongoDriver.MongoDriverConfig{
		ClusterEndpoint: uri.Host,
		Database:        database,
		ReplicaSet:      uri.Query().Get("replicaSet"),
		ConnectTimeout:  5 * time.Second,
		QueryTimeout:    15 * time.Second,
	}
	return mongoDriver.Open(config)
}

func unixMs(t time.Time) int64 { return t.UnixMilli() }

// output serialises lines from many goroutines onto stdout.
type output struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newOutput(w io.Writer) *output { return &output{w: bufio.NewWriter(w)} }

func (o *output) line(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, format+"\n", args...)
}

func (o *output) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Flush()
}

func contend(args []string) error {
	flags := flag.NewFlagSet("contend", flag.ExitOnError)
	family := flags.String("family", "", "lock family: collection <family>_locks")
	database := flags.String("database", "actix_mongo_lock_tests", "database")
	process := flags.String("process", fmt.Sprintf("go%d", os.Getpid()), "name in the output")
	workers := flags.Int("workers", 4, "goroutines taking turns")
	resources := flags.Int("resources", 3, "resources r0..r<n-1>")
	seconds := flags.Float64("seconds", 20, "how long to contend")
	holdMs := flags.Int("hold-ms", 5, "how long each hold lasts")
	useLock := flags.Bool("lock", false, "one Lock attempt per turn instead of Acquire")
	readers := flags.Int("readers", 0, "how many of the workers take shared holds (SLock)")
	maxHolders := flags.Int("max-holders", -1, "the readers' limit on shared holders (< 0: none)")
	flags.Parse(args)
	if *family == "" || *workers < 1 || *resources < 1 {
		return errors.New("contend needs --family, --workers >= 1 and --resources >= 1")
	}
	ctx := context.Background()
	conn, err := connect(*database)
	if err != nil {
		return err
	}
	lck := dplock.New(ctx, conn, *family)
	client, ok := lck.Client.(*lock.Client)
	if *readers > 0 && !ok {
		return errors.New("dplock's client is not square/mongo-lock's")
	}
	out := newOutput(os.Stdout)
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	var grants, refusals, failures int64
	var counts sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(turn int) {
			defer wg.Done()
			shared := turn < *readers
			suffix := ""
			if shared {
				suffix = " shared"
			}
			for time.Now().Before(deadline) {
				resource := fmt.Sprintf("r%d", turn%*resources)
				turn++
				requested := time.Now()
				var lockID string
				var err error
				if shared {
					lockID, err = slockUntil(ctx, client, fmt.Sprintf("%s-%s", *family, resource),
						fmt.Sprintf("%s-%s-s%d", *family, resource, time.Now().UnixNano()),
						*maxHolders, deadline)
				} else if *useLock {
					lockID, err = lck.Lock(ctx, resource)
				} else {
					lockID, err = lck.Acquire(ctx, resource)
				}
				if err != nil {
					counts.Lock()
					if errors.Is(err, lock.ErrAlreadyLocked) || errors.Is(err, dplock.ErrAcquireMaxRetries) {
						refusals++
					} else {
						failures++
						fmt.Fprintf(os.Stderr, "dplock-peer: %s: %v\n", resource, err)
					}
					counts.Unlock()
					if *useLock {
						time.Sleep(time.Millisecond)
					}
					continue
				}
				granted := time.Now()
				counts.Lock()
				grants++
				counts.Unlock()
				time.Sleep(time.Duration(*holdMs) * time.Millisecond)
				sent := time.Now()
				lck.Unlock(ctx, lockID)
				released := time.Now()
				out.line("DPLOCK-HOLD %s %s %s %d %d %d %d %d%s", *process, resource, lockID,
					unixMs(requested), unixMs(granted), unixMs(requested.Add(dplock.TTL*time.Second)),
					unixMs(sent), unixMs(released), suffix)
			}
		}(w)
	}
	wg.Wait()
	lck.Close(ctx)
	out.line("DPLOCK-DONE %s %d %d %d", *process, grants, refusals, failures)
	out.flush()
	return conn.Close(ctx)
}

// slockUntil takes square/mongo-lock's shared SLock of resource as lockID (at most limit
// holders; < 0 for none), trying again every 10 ms while it is refused, until deadline; then it
// answers lock.ErrAlreadyLocked.
func slockUntil(ctx context.Context, client *lock.Client, resource, lockID string, limit int, deadline time.Time) (string, error) {
	for {
		err := client.SLock(ctx, resource, lockID, lock.LockDetails{TTL: dplock.TTL}, limit)
		if err == nil || !errors.Is(err, lock.ErrAlreadyLocked) || !time.Now().Before(deadline) {
			return lockID, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serve(args []string) error {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	family := flags.String("family", "", "lock family: collection <family>_locks")
	database := flags.String("database", "actix_mongo_lock_tests", "database")
	fixedTimeID := flags.Int("fixed-time-id", -1, "make every lock id end in this number")
	flags.Parse(args)
	if *family == "" {
		return errors.New("serve needs --family")
	}
	if *fixedTimeID >= 0 {
		id := *fixedTimeID
		dplock.GenerateTimeID = func() int { return id }
	}
	ctx := context.Background()
	conn, err := connect(*database)
	if err != nil {
		return err
	}
	lck := dplock.New(ctx, conn, *family)
	out := newOutput(os.Stdout)
	out.line("READY")
	out.flush()
	input := bufio.NewScanner(os.Stdin)
	for input.Scan() {
		fields := strings.Fields(input.Text())
		if len(fields) == 0 {
			continue
		}
		before := time.Now()
		switch {
		case (fields[0] == "lock" || fields[0] == "acquire") && len(fields) == 2:
			var lockID string
			var err error
			if fields[0] == "lock" {
				lockID, err = lck.Lock(ctx, fields[1])
			} else {
				lockID, err = lck.Acquire(ctx, fields[1])
			}
			after := time.Now()
			switch {
			case err == nil:
				out.line("LOCKED %s %d %d", lockID, unixMs(before), unixMs(after))
			case errors.Is(err, lock.ErrAlreadyLocked) || errors.Is(err, dplock.ErrAcquireMaxRetries):
				out.line("REFUSED %d %d", unixMs(before), unixMs(after))
			default:
				out.line("ERROR %s", strings.ReplaceAll(err.Error(), "\n", " "))
			}
		case fields[0] == "slock" && len(fields) == 3:
			var limit int
			if _, err := fmt.Sscan(fields[2], &limit); err != nil {
				out.line("ERROR bad limit %q", fields[2])
				break
			}
			client, ok := lck.Client.(*lock.Client)
			if !ok {
				out.line("ERROR dplock's client is not square/mongo-lock's")
				break
			}
			lockID := fmt.Sprintf("%s-%s-s%d", *family, fields[1], time.Now().UnixNano())
			err := client.SLock(ctx, fmt.Sprintf("%s-%s", *family, fields[1]), lockID,
				lock.LockDetails{TTL: dplock.TTL}, limit)
			after := time.Now()
			switch {
			case err == nil:
				out.line("LOCKED %s %d %d", lockID, unixMs(before), unixMs(after))
			case errors.Is(err, lock.ErrAlreadyLocked):
				out.line("REFUSED %d %d", unixMs(before), unixMs(after))
			default:
				out.line("ERROR %s", strings.ReplaceAll(err.Error(), "\n", " "))
			}
		case fields[0] == "unlock" && len(fields) == 2:
			lck.Unlock(ctx, fields[1])
			out.line("UNLOCKED %d %d", unixMs(before), unixMs(time.Now()))
		case fields[0] == "purge" && len(fields) == 1:
			purged, err := lck.Purger.Purge(ctx)
			if err != nil {
				out.line("ERROR %s", strings.ReplaceAll(err.Error(), "\n", " "))
				break
			}
			ids := make([]string, 0, len(purged))
			for _, status := range purged {
				ids = append(ids, status.LockId)
			}
			out.line("PURGED %d %s", len(purged), strings.Join(ids, " "))
		case fields[0] == "now" && len(fields) == 1:
			out.line("NOW %d", unixMs(before))
		case fields[0] == "close" && len(fields) == 1:
			lck.Close(ctx)
			out.line("CLOSED")
			out.flush()
			return conn.Close(ctx)
		default:
			out.line("ERROR unknown command %q", input.Text())
		}
		out.flush()
	}
	lck.Close(ctx)
	return conn.Close(ctx)
}
