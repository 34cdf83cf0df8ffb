using System.CommandLine;
using BlockRepl;

// blockrepl: the CLI. Every verb reports bad input as one line on stderr and exit code 1.
var root = new RootCommand("blockrepl: block device replication over NBD and iSCSI");

var config = new Option<string?>("--config") { Description = "JSON config file; flags override it" };
var dataDir = new Option<string?>("--data-dir") { Description = "directory for images, metadata and the admin socket (default ./data)" };
var volumeName = new Option<string?>("--volume") { Description = "volume name, also the NBD export name (default vol0)" };
var image = new Option<string?>("--image") { Description = "raw image path (default DATA_DIR/NAME.img)" };
var size = new Option<string?>("--size") { Description = "size of a new image, e.g. 10G; must match an existing one" };
var role = new Option<string?>("--role") { Description = "primary|secondary for newly created metadata (default primary)" };
var nbd = new Option<string?>("--nbd") { Description = "NBD endpoint: HOST:PORT, unix:PATH, a comma-separated list of them, or off (default 127.0.0.1:10809)" };
var admin = new Option<string?>("--admin") { Description = "admin endpoint: unix:PATH or 127.0.0.1:PORT (default unix:DATA_DIR/admin.sock)" };

var iscsi = new Option<string?>("--iscsi") { Description = "iSCSI endpoint HOST:PORT, or off (default off)" };
var iscsiIqn = new Option<string?>("--iscsi-iqn") { Description = "the volume's iSCSI target name (default iqn.2026-11.io.blockrepl:VOLUME)" };
var iscsiChap = new Option<string?>("--iscsi-chap") { Description = "USER:SECRET: initiators must log in with CHAP (default: no authentication)" };
var iscsiMutualChap = new Option<string?>("--iscsi-mutual-chap") { Description = "USER:SECRET the target proves itself with when an initiator asks for mutual CHAP" };

var listen = new Option<string?>("--listen") { Description = "replication listen address HOST:PORT, or off (default off)" };
var peer = new Option<string?>("--peer") { Description = "the peer's replication address http://HOST:PORT (default none: standalone)" };
var mode = new Option<string?>("--mode") { Description = "sync|async: ack after the peer applied the write, or after the local write (default sync)" };
var onPeerLoss = new Option<string?>("--on-peer-loss") { Description = "continue|block: go on tracking dirty ranges, or hold writes, while the peer is away (default continue)" };
var peerTimeout = new Option<string?>("--peer-timeout") { Description = "a peer silent this long is dead, e.g. 2s (default 2s)" };
var sendQueue = new Option<string?>("--send-queue") { Description = "send queue bound; async goes ahead past it, sync writers wait (default 64M)" };
var resyncRate = new Option<string?>("--resync-rate") { Description = "cap on the resync rate, bytes/s, e.g. 200M (default 0: none)" };
var resyncMinRate = new Option<string?>("--resync-min-rate") { Description = "resync rate kept while the application writes, bytes/s (default 64M; 0: no pacing)" };
var resync = new Option<string?>("--resync") { Description = "data|checksum: a resync sends every dirty range, or first compares chunk hashes with the peer and sends only what differs (default data)" };

var onIoError = new Option<string?>("--on-io-error") { Description = "detach|pass: on a local I/O error a connected sync primary goes diskless and serves through its peer, or the client gets the error (default detach)" };
var faultFile = new Option<string?>("--fault-injection-file") { Description = "test hook: while this file exists the local image fails with EIO" };
var activityLog = new Option<string?>("--activity-log") { Description = "activity-log size in 4 MiB extents, or off (default 1024: a primary crash resyncs only what it names)" };

var serve = new Command("serve", "run the daemon: export the volume over NBD (and iSCSI), replicate it to a peer")
{
    config, dataDir, volumeName, image, size, role, nbd, admin, iscsi, iscsiIqn, iscsiChap, iscsiMutualChap, listen, peer, mode, onPeerLoss, peerTimeout, sendQueue, activityLog, resyncRate, resyncMinRate, resync, onIoError, faultFile,
};
serve.SetAction((result, ct) => Cli.Run(async () =>
{
    var fromFile = ServeOptions.Load(result.GetValue(config));
    var options = fromFile with
    {
        DataDir = result.GetValue(dataDir) ?? fromFile.DataDir,
        Volume = result.GetValue(volumeName) ?? fromFile.Volume,
        Image = result.GetValue(image) ?? fromFile.Image,
        Size = result.GetValue(size) ?? fromFile.Size,
        Role = result.GetValue(role) ?? fromFile.Role,
        Nbd = result.GetValue(nbd) ?? fromFile.Nbd,
        Admin = result.GetValue(admin) ?? fromFile.Admin,
        Iscsi = result.GetValue(iscsi) ?? fromFile.Iscsi,
        IscsiIqn = result.GetValue(iscsiIqn) ?? fromFile.IscsiIqn,
        IscsiChap = result.GetValue(iscsiChap) ?? fromFile.IscsiChap,
        IscsiMutualChap = result.GetValue(iscsiMutualChap) ?? fromFile.IscsiMutualChap,
        Listen = result.GetValue(listen) ?? fromFile.Listen,
        Peer = result.GetValue(peer) ?? fromFile.Peer,
        Mode = result.GetValue(mode) ?? fromFile.Mode,
        OnPeerLoss = result.GetValue(onPeerLoss) ?? fromFile.OnPeerLoss,
        PeerTimeout = result.GetValue(peerTimeout) ?? fromFile.PeerTimeout,
        SendQueue = result.GetValue(sendQueue) ?? fromFile.SendQueue,
        Resync = result.GetValue(resync) ?? fromFile.Resync,
        ActivityLog = result.GetValue(activityLog) ?? fromFile.ActivityLog,
        OnIoError = result.GetValue(onIoError) ?? fromFile.OnIoError,
        FaultInjectionFile = result.GetValue(faultFile) ?? fromFile.FaultInjectionFile,
        ResyncRate = result.GetValue(resyncRate) ?? fromFile.ResyncRate,
        ResyncMinRate = result.GetValue(resyncMinRate) ?? fromFile.ResyncMinRate,
    };
    return await ServeCommand.RunAsync(options, ct).ConfigureAwait(false);
}));

Command AdminVerb(string name, string description, Func<AdminAddress, string?, ParseResult, CancellationToken, Task<int>> run, params Option[] extra)
{
    var adminOption = new Option<string?>("--admin") { Description = "admin endpoint of the daemon (default unix:DATA_DIR/admin.sock)" };
    var dataDirOption = new Option<string?>("--data-dir") { Description = "the daemon's data dir, to find its admin socket" };
    var volumeOption = new Option<string?>("--volume") { Description = "the volume (default: the daemon's only volume)" };
    var command = new Command(name, description) { adminOption, dataDirOption, volumeOption };
    foreach (var option in extra)
    {
        command.Options.Add(option);
    }

    command.SetAction((result, ct) => Cli.Run(() =>
    {
        var address = AdminAddress.Parse(result.GetValue(adminOption) ?? ServeOptions.DefaultAdmin(result.GetValue(dataDirOption) ?? "./data"));
        return run(address, result.GetValue(volumeOption), result, ct);
    }));
    return command;
}

var json = new Option<bool>("--json") { Description = "print the status as JSON" };
var force = new Option<bool>("--force") { Description = "promote even when the peer is a connected primary or the local disk is not uptodate" };
var watch = new Option<bool>("--watch") { Description = "follow the status until Ctrl-C: at each change and at least every second, with a progress bar (bytes, rate, ETA) for a running resync; with --json one object per line" };
var status = AdminVerb("status", "show the volumes of a running daemon",
    (a, v, r, ct) => r.GetValue(watch)
        ? AdminCommands.WatchAsync(a, v, r.GetValue(json), ct)
        : AdminCommands.StatusAsync(a, v, r.GetValue(json), ct), json, watch);
var promote = AdminVerb("promote", "make this node's volume primary (failover or planned switchover)",
    (a, v, r, ct) => AdminCommands.PromoteAsync(a, v, r.GetValue(force), ct), force);
var demoteTimeout = new Option<string?>("--timeout") { Description = "how long to wait for the peer to acknowledge every write (default 30s; 100ms..10m)" };
var demote = AdminVerb("demote", "make this node's volume secondary: ship what is queued, close clients",
    (a, v, r, ct) => AdminCommands.DemoteAsync(a, v, r.GetValue(demoteTimeout) is { } t ? ServeOptions.ParseDuration(t, "--timeout") : null, ct), demoteTimeout);
var repair = new Option<bool>("--repair") { Description = "resync the chunks that differ and verify them again" };
var chunk = new Option<string?>("--chunk") { Description = "chunk size compared, a multiple of 4K up to 1M (default 64K)" };
var verifyJson = new Option<bool>("--json") { Description = "print the result as JSON" };
var verify = AdminVerb("verify", "on the primary: compare chunk hashes of both images while in use (exit 0 identical, 3 differ, 4 differed and repaired)",
    (a, v, r, ct) => AdminCommands.VerifyAsync(a, v, r.GetValue(chunk), r.GetValue(repair), r.GetValue(verifyJson), ct), repair, chunk, verifyJson);

root.Subcommands.Add(serve);
root.Subcommands.Add(status);
root.Subcommands.Add(promote);
root.Subcommands.Add(demote);
root.Subcommands.Add(AdminVerb("attach", "a diskless primary's local disk is back: pull what it missed from the peer, serve locally again",
    (a, v, r, ct) => AdminCommands.AttachAsync(a, v, ct)));
root.Subcommands.Add(verify);
var discard = new Option<bool>("--discard-my-data") { Description = "this node gives up its changes: it becomes secondary and is resynced from its peer" };
root.Subcommands.Add(AdminVerb("resolve", "end a split brain on the chosen victim (resolve --discard-my-data)",
    (a, v, r, ct) => AdminCommands.ResolveAsync(a, v, r.GetValue(discard), ct), discard));
return await root.Parse(args).InvokeAsync().ConfigureAwait(false);

internal static class Cli
{
    public static async Task<int> Run(Func<Task<int>> action)
    {
        try
        {
            return await action().ConfigureAwait(false);
        }
        catch (UserError ex)
        {
            await Console.Error.WriteLineAsync($"blockrepl: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
    }
}
