using System.CommandLine;
using BlockRepl;

// blockrepl: the CLI. Every verb reports bad input as one line on stderr and exit code 1.
var root = new RootCommand("blockrepl: block device replication over NBD");

var config = new Option<string?>("--config") { Description = "JSON config file; flags override it" };
var dataDir = new Option<string?>("--data-dir") { Description = "directory for images, metadata and the admin socket (default ./data)" };
var volumeName = new Option<string?>("--volume") { Description = "volume name, also the NBD export name (default vol0)" };
var image = new Option<string?>("--image") { Description = "raw image path (default DATA_DIR/NAME.img)" };
var size = new Option<string?>("--size") { Description = "size of a new image, e.g. 10G; must match an existing one" };
var role = new Option<string?>("--role") { Description = "primary|secondary for newly created metadata (default primary)" };
var nbd = new Option<string?>("--nbd") { Description = "NBD endpoint: HOST:PORT, unix:PATH or off (default 127.0.0.1:10809)" };
var admin = new Option<string?>("--admin") { Description = "admin endpoint: unix:PATH or 127.0.0.1:PORT (default unix:DATA_DIR/admin.sock)" };

var serve = new Command("serve", "run the daemon: export the volume over NBD") { config, dataDir, volumeName, image, size, role, nbd, admin };
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
    };
    return await ServeCommand.RunAsync(options, ct).ConfigureAwait(false);
}));

var statusAdmin = new Option<string?>("--admin") { Description = "admin endpoint of the daemon (default unix:DATA_DIR/admin.sock)" };
var statusDataDir = new Option<string?>("--data-dir") { Description = "the daemon's data dir, to find its admin socket" };
var json = new Option<bool>("--json") { Description = "print the status as JSON" };
var status = new Command("status", "show the volumes of a running daemon") { statusAdmin, statusDataDir, json };
status.SetAction((result, ct) => Cli.Run(() =>
{
    var address = AdminAddress.Parse(result.GetValue(statusAdmin) ?? ServeOptions.DefaultAdmin(result.GetValue(statusDataDir) ?? "./data"));
    return StatusCommand.RunAsync(address, result.GetValue(json), ct);
}));

root.Subcommands.Add(serve);
root.Subcommands.Add(status);
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
