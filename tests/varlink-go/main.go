// SPDX-License-Identifier: MIT

// A client of agend that is not ours: Debian's Go varlink library
// (golang-github-varlink-go-dev, github.com/varlink/go) calls GetInfo,
// GetInterfaceDescription, Acquire, List, Status, Watch, Check and Release on the
// agend at the address given (unix:PATH), and checks the replies. Exits 0 when all is
// as the interface (docs/io.agend.Lease.varlink) says, 1 with a message otherwise.
//
// Built at test time by tests/test-varlink-go.sh, offline, in GOPATH mode against the
// packaged library under /usr/share/gocode.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/varlink/go/varlink"
)

type Owner struct {
	Uid  int64   `json:"uid"`
	Gid  int64   `json:"gid"`
	Pid  int64   `json:"pid"`
	Comm string  `json:"comm"`
	Unit *string `json:"unit,omitempty"`
}

type Lease struct {
	Id          string   `json:"id"`
	Resource    string   `json:"resource"`
	Units       int64    `json:"units"`
	Exclusive   bool     `json:"exclusive"`
	Token       int64    `json:"token"`
	Owner       Owner    `json:"owner"`
	Description string   `json:"description"`
	Created     int64    `json:"created"`
	Ttl         *float64 `json:"ttl,omitempty"`
	Deadline    *int64   `json:"deadline,omitempty"`
	Detached    bool     `json:"detached"`
	State       string   `json:"state"`
}

type Event struct {
	Type     string  `json:"type"`
	Time     int64   `json:"time"`
	Resource string  `json:"resource"`
	Lease    *string `json:"lease,omitempty"`
	Token    *int64  `json:"token,omitempty"`
	Reason   *string `json:"reason,omitempty"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "varlink-go: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: varlink-go unix:PATH")
	}
	address := os.Args[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c, err := varlink.NewConnection(ctx, address)
	if err != nil {
		fail("connect %s: %v", address, err)
	}
	defer c.Close()

	// org.varlink.service
	var vendor, product, version, url string
	var interfaces []string
	if err := c.GetInfo(ctx, &vendor, &product, &version, &url, &interfaces); err != nil {
		fail("GetInfo: %v", err)
	}
	if vendor != "agend" || !strings.Contains(strings.Join(interfaces, " "), "io.agend.Lease") {
		fail("GetInfo: vendor %q, interfaces %v", vendor, interfaces)
	}
	fmt.Printf("ok GetInfo: %s %s %s, %v\n", vendor, product, version, interfaces)

	desc, err := c.GetInterfaceDescription(ctx, "io.agend.Lease")
	if err != nil {
		fail("GetInterfaceDescription: %v", err)
	}
	for _, want := range []string{"interface io.agend.Lease", "method Acquire(", "method Watch(", "error NoSuchLease"} {
		if !strings.Contains(desc, want) {
			fail("GetInterfaceDescription lacks %q", want)
		}
	}
	fmt.Printf("ok GetInterfaceDescription: %d bytes\n", len(desc))

	// Watch on a connection of its own (a Watch holds the later calls of its connection).
	w, err := varlink.NewConnection(ctx, address)
	if err != nil {
		fail("connect for Watch: %v", err)
	}
	defer w.Close()
	watchIn := struct {
		Resource string `json:"resource"`
	}{"go-resource"}
	recv, err := w.Send(ctx, "io.agend.Lease.Watch", watchIn, varlink.More)
	if err != nil {
		fail("Watch: %v", err)
	}
	var first struct {
		Event *Event `json:"event"`
	}
	flags, err := recv(ctx, &first)
	if err != nil || flags&varlink.Continues == 0 || first.Event != nil {
		fail("Watch: first reply %+v, flags %d, err %v; want {event: null} with continues", first, flags, err)
	}
	fmt.Println("ok Watch: in effect")

	// Acquire
	acqIn := struct {
		Resource    string `json:"resource"`
		Description string `json:"description"`
	}{"go-resource", "from Go"}
	var acq struct {
		State  string `json:"state"`
		Lease  *Lease `json:"lease"`
		Secret string `json:"secret"`
	}
	if err := c.Call(ctx, "io.agend.Lease.Acquire", acqIn, &acq); err != nil {
		fail("Acquire: %v", err)
	}
	if acq.State != "granted" || acq.Lease == nil || acq.Lease.Id == "" || acq.Lease.Token < 1 || acq.Secret == "" ||
		acq.Lease.Owner.Pid != int64(os.Getpid()) {
		fail("Acquire: unexpected reply %+v", acq)
	}
	l := acq.Lease
	fmt.Printf("ok Acquire: lease %s token %d\n", l.Id, l.Token)

	// The Watch sees the grant.
	var ev struct {
		Event *Event `json:"event"`
	}
	for {
		if _, err := recv(ctx, &ev); err != nil {
			fail("Watch: %v", err)
		}
		if ev.Event != nil && ev.Event.Type == "granted" {
			break
		}
	}
	if ev.Event.Lease == nil || *ev.Event.Lease != l.Id || ev.Event.Token == nil || *ev.Event.Token != l.Token {
		fail("Watch: granted event %+v is not our lease", ev.Event)
	}
	fmt.Println("ok Watch: granted event")

	// List
	listIn := struct {
		Resource string `json:"resource"`
	}{"go-resource"}
	var list struct {
		Leases  []Lease       `json:"leases"`
		Waiters []interface{} `json:"waiters"`
	}
	if err := c.Call(ctx, "io.agend.Lease.List", listIn, &list); err != nil {
		fail("List: %v", err)
	}
	if len(list.Leases) != 1 || list.Leases[0].Id != l.Id || list.Leases[0].Description != "from Go" ||
		list.Leases[0].State != "held" || list.Waiters == nil {
		fail("List: %+v", list)
	}
	fmt.Println("ok List")

	// Status
	var status struct {
		Version string  `json:"version"`
		Uptime  float64 `json:"uptime"`
		BootId  string  `json:"boot_id"`
		Leases  int64   `json:"leases"`
		Sync    string  `json:"sync"`
	}
	if err := c.Call(ctx, "io.agend.Lease.Status", nil, &status); err != nil {
		fail("Status: %v", err)
	}
	if status.Version != version || status.Leases < 1 || status.BootId == "" || status.Sync == "" {
		fail("Status: %+v", status)
	}
	fmt.Printf("ok Status: %d leases, sync %s\n", status.Leases, status.Sync)

	// Check: the fencing token is current while held.
	checkIn := struct {
		Resource string `json:"resource"`
		Token    int64  `json:"token"`
	}{"go-resource", l.Token}
	var check struct {
		Current bool `json:"current"`
	}
	if err := c.Call(ctx, "io.agend.Lease.Check", checkIn, &check); err != nil || !check.Current {
		fail("Check: current %v, err %v", check.Current, err)
	}
	fmt.Println("ok Check")

	// Release with the secret, then once more: the error as the library reports it.
	relIn := struct {
		Id     string `json:"id"`
		Secret string `json:"secret"`
	}{l.Id, acq.Secret}
	if err := c.Call(ctx, "io.agend.Lease.Release", relIn, nil); err != nil {
		fail("Release: %v", err)
	}
	err = c.Call(ctx, "io.agend.Lease.Release", relIn, nil)
	verr, ok := err.(*varlink.Error)
	if !ok || verr.Name != "io.agend.Lease.NoSuchLease" {
		fail("second Release: want io.agend.Lease.NoSuchLease, got %v", err)
	}
	fmt.Println("ok Release, then NoSuchLease")

	for {
		if _, err := recv(ctx, &ev); err != nil {
			fail("Watch: %v", err)
		}
		if ev.Event != nil && ev.Event.Type == "released" {
			break
		}
	}
	fmt.Println("ok Watch: released event")
}
