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
        meta.DiscardMyData = true;
        MetaFile.Create(path, meta).Dispose();
        var (file, back) = MetaFile.TryOpen(path)!.Value;
        file.Dispose();
        Assert.Equal((meta.VolumeUuid, meta.NodeId, meta.Name, meta.SizeBytes, meta.Role, meta.Disk, meta.CurrentGeneration, meta.Fresh, meta.DiscardMyData),
            (back.VolumeUuid, back.NodeId, back.Name, back.SizeBytes, back.Role, back.Disk, back.CurrentGeneration, back.Fresh, back.DiscardMyData));
        Assert.Equal([42UL], back.HistoryGenerations);
        Assert.Equal("secondary", back.Role);
        Assert.True(back.Fresh);
    }

    [Fact]
    public void Load_CorruptFile_FailsWithTheFileName()
    {
        var path = Path.Combine(_dir, "bad.meta");
        File.WriteAllText(path, "{ not json");
        var error = Assert.Throws<InvalidDataException>(() => MetaFile.TryOpen(path));
        Assert.Contains(path, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Load_BothRecordSlotsCorrupt_IsRefused()
    {
        var path = Path.Combine(_dir, "v.meta");
        MetaFile.Create(path, VolumeMetadata.CreateNew("v", 1 << 20, VolumeRole.Primary)).Dispose();
        using (var f = new FileStream(path, FileMode.Open))
        {
            f.Position = 40;
            f.WriteByte(0xFF);
        }

        Assert.Throws<InvalidDataException>(() => MetaFile.TryOpen(path));
    }

    [Fact]
    public void TornNewerRecord_FallsBackToTheOlderSlot()
    {
        var path = Path.Combine(_dir, "v.meta");
        var meta = VolumeMetadata.CreateNew("v", 1 << 20, VolumeRole.Primary);
        using (var file = MetaFile.Create(path, meta)) // seq 1 in slot 0
        {
            meta.CurrentGeneration = 7;
            file.Save(meta); // seq 2 in slot 1
        }

        using (var f = new FileStream(path, FileMode.Open))
        {
            f.Position = 64 * 1024 + 100; // inside the JSON of slot 1: a torn write
            f.WriteByte((byte)'#');
        }

        var (reopened, back) = MetaFile.TryOpen(path)!.Value;
        using (reopened)
        {
            Assert.NotEqual(7UL, back.CurrentGeneration); // the older, intact record
            back.CurrentGeneration = 9;
            reopened.Save(back); // goes over the torn slot, not the good one
        }

        var (again, latest) = MetaFile.TryOpen(path)!.Value;
        again.Dispose();
        Assert.Equal(9UL, latest.CurrentGeneration);
    }

    [Fact]
    public void ActivityLogAndBitmap_RoundTrip_AndATornLogSlotFallsBack()
    {
        var path = Path.Combine(_dir, "v.meta");
        var meta = VolumeMetadata.CreateNew("v", 1L << 30, VolumeRole.Primary);
        using (var file = MetaFile.Create(path, meta))
        {
            Assert.Empty(file.ReadActivityLog());
            file.WriteActivityLog([1, 5, 200]);
            file.WriteActivityLog([1, 5, 200, 255]);
            file.WriteBitmap([0xF0UL, 1UL], 512);
            file.Sync();
        }

        var (f2, _) = MetaFile.TryOpen(path)!.Value;
        using (f2)
        {
            Assert.Equal([1u, 5u, 200u, 255u], f2.ReadActivityLog());
            var words = new ulong[(1L << 30) / 4096 / 64];
            f2.ReadBitmap(words);
            Assert.Equal(0xF0UL, words[512]);
            Assert.Equal(1UL, words[513]);
            Assert.Equal(2, words.Count(w => w != 0));
        }

        // Tear the newer log slot (slot 1 holds the second write): the first one, in slot 0, is read instead.
        using (var fs = new FileStream(path, FileMode.Open))
        {
            fs.Position = 160 * 1024 + 40;
            fs.WriteByte(0x77);
        }

        var (f3, _) = MetaFile.TryOpen(path)!.Value;
        using (f3)
        {
            Assert.Equal([1u, 5u, 200u], f3.ReadActivityLog());
        }
    }

    [Fact]
    public void VersionOneJsonFile_IsUpgradedInPlace()
    {
        var path = Path.Combine(_dir, "v.meta");
        var uuid = Guid.NewGuid();
        File.WriteAllText(path, $$"""
            { "formatVersion": 1, "volumeUuid": "{{uuid}}", "nodeId": "{{Guid.NewGuid()}}", "name": "v", "sizeBytes": 1048576,
              "role": "primary", "disk": "uptodate", "currentGeneration": 5, "bitmapGeneration": 0, "historyGenerations": [3],
              "fresh": false, "cleanShutdown": true, "needsFullSync": false }
            """);
        var (file, meta) = MetaFile.TryOpen(path)!.Value;
        file.Dispose();
        Assert.Equal((uuid, 5UL, VolumeMetadata.CurrentFormatVersion), (meta.VolumeUuid, meta.CurrentGeneration, meta.FormatVersion));
        Assert.NotEqual((byte)'{', File.ReadAllBytes(path)[0]);
        Assert.False(File.Exists(path + ".tmp"));
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
