using BlockRepl.Core;

namespace BlockRepl.Tests.Unit;

public sealed class VolumeMetadataTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockrepl-meta-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Save_ThenLoad_RoundTripsEveryField()
    {
        var path = Path.Combine(_dir, "v.meta");
        var meta = VolumeMetadata.CreateNew("v", 1 << 30, VolumeRole.Secondary);
        meta.HistoryGenerations.Add(42);
        meta.Save(path);
        Assert.False(File.Exists(path + ".tmp"));
        var back = VolumeMetadata.TryLoad(path)!;
        Assert.Equal((meta.VolumeUuid, meta.NodeId, meta.Name, meta.SizeBytes, meta.Role, meta.Disk, meta.CurrentGeneration, meta.Fresh),
            (back.VolumeUuid, back.NodeId, back.Name, back.SizeBytes, back.Role, back.Disk, back.CurrentGeneration, back.Fresh));
        Assert.Equal([42UL], back.HistoryGenerations);
        Assert.Equal("secondary", back.Role);
        Assert.True(back.Fresh);
    }

    [Fact]
    public void Load_CorruptFile_FailsWithTheFileName()
    {
        var path = Path.Combine(_dir, "bad.meta");
        File.WriteAllText(path, "{ not json");
        var error = Assert.Throws<InvalidDataException>(() => VolumeMetadata.TryLoad(path));
        Assert.Contains(path, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Volume_OpenWithConflictingSize_IsRefusedAndImageUntouched()
    {
        var options = new VolumeOptions { Name = "v", ImagePath = Path.Combine(_dir, "v.img"), SizeBytes = 1 << 20 };
        Volume.Open(options).Dispose();
        var error = Assert.Throws<InvalidOperationException>(() => Volume.Open(options with { SizeBytes = 2 << 20 }));
        Assert.Contains("refusing to resize", error.Message, StringComparison.Ordinal);
        Assert.Equal(1 << 20, new FileInfo(options.ImagePath).Length);
    }

    [Fact]
    public void Volume_ReopenedWithOtherRole_KeepsTheRecordedRole()
    {
        var options = new VolumeOptions { Name = "v", ImagePath = Path.Combine(_dir, "v.img"), SizeBytes = 1 << 20, InitialRole = VolumeRole.Secondary };
        Volume.Open(options).Dispose();
        var warnings = new List<string>();
        using var volume = Volume.Open(options with { InitialRole = VolumeRole.Primary }, warnings.Add);
        Assert.Equal(VolumeRole.Secondary, volume.Role);
        Assert.False(volume.IsWritable);
        Assert.Contains(warnings, w => w.Contains("ignored", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("")]
    [InlineData(".hidden")]
    [InlineData("a/b")]
    [InlineData("x y")]
    public void Volume_InvalidName_IsRefused(string name) =>
        Assert.Throws<InvalidOperationException>(() => Volume.Open(new VolumeOptions { Name = name, ImagePath = Path.Combine(_dir, "x.img"), SizeBytes = 1 << 20 }));
}
