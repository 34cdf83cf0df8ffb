using BlockRepl.Core;
using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

/// <summary>A volume on a sparse temp file, deleted on dispose.</summary>
internal sealed class TempVolume : IDisposable
{
    public TempVolume(long size = 16 << 20, string name = "vol", VolumeRole role = VolumeRole.Primary)
    {
        Directory = Path.Combine(Path.GetTempPath(), "blockrepl-unit-" + Guid.NewGuid().ToString("N"));
        System.IO.Directory.CreateDirectory(Directory);
        Volume = Volume.Open(new VolumeOptions
        {
            Name = name,
            ImagePath = Path.Combine(Directory, name + ".img"),
            SizeBytes = size,
            InitialRole = role,
        });
        Exports = new Dictionary<string, NbdExport> { [name] = new NbdExport(Volume, "test volume") };
    }

    public string Directory { get; }

    public Volume Volume { get; }

    public IReadOnlyDictionary<string, NbdExport> Exports { get; }

    /// <summary>Runs a whole connection over the scripted input and returns what the server sent.</summary>
    public byte[] RunSession(byte[] input, params int[] cuts)
    {
        var transport = new ScriptedTransport(input, cuts);
        using var connection = new NbdConnection(transport, Exports, "test", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        connection.Run();
        return transport.Output;
    }

    public void Dispose()
    {
        Volume.Dispose();
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}
