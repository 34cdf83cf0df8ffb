using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using BlockRepl.Iscsi;
using BlockRepl.Tests.Unit;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockRepl.Tests.Iscsi;

/// <summary>Text keys, digests and CHAP, each against values computed independently of the target's code.</summary>
public sealed class IscsiProtocolTests
{
    [Fact]
    public void Crc32C_Rfc3720Vectors_MatchByteForByteOnTheWire()
    {
        // RFC 3720 B.4: the CRC bytes as they appear on the wire (the digest is sent least significant byte first).
        Assert.Equal(new byte[] { 0xaa, 0x36, 0x91, 0x8a }, IscsiTestClient.Digest(new byte[32]));
        Assert.Equal(new byte[] { 0x43, 0xab, 0xa8, 0x62 }, IscsiTestClient.Digest(Enumerable.Repeat((byte)0xff, 32).ToArray()));
        Assert.Equal(new byte[] { 0x4e, 0x79, 0xdd, 0x46 }, IscsiTestClient.Digest(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()));
        Assert.Equal(new byte[] { 0x5c, 0xdb, 0x3f, 0x11 }, IscsiTestClient.Digest(Enumerable.Range(0, 32).Select(i => (byte)(31 - i)).ToArray()));
    }

    [Fact]
    public void TextKeys_NulSeparatedPairs_ParsedInOrderWithEmptyItemsSkipped()
    {
        var data = Encoding.UTF8.GetBytes("InitiatorName=iqn.2026-11.x:é\0\0MaxBurstLength=262144\0Empty=\0X=a=b\0");
        var keys = IscsiTextKeys.Parse(data);
        Assert.Equal(
            [new("InitiatorName", "iqn.2026-11.x:é"), new("MaxBurstLength", "262144"), new("Empty", ""), new("X", "a=b")],
            keys);
        Assert.Equal(Encoding.UTF8.GetBytes("InitiatorName=iqn.2026-11.x:é\0MaxBurstLength=262144\0Empty=\0X=a=b\0"), IscsiTextKeys.Encode(keys));
        Assert.Throws<IscsiProtocolException>(() => IscsiTextKeys.Parse("NoEquals\0"u8));
        Assert.Throws<IscsiProtocolException>(() => IscsiTextKeys.Parse("=value\0"u8));
    }

    [Fact]
    public void ChapLogin_ResponseComputedWithMd5_AcceptedAndMutualAnswered_WrongOneRefused()
    {
        using var vol = new TempVolume(size: 1 << 20);
        var options = new IscsiServerOptions
        {
            Chap = IscsiChapSecret.Parse("alice:alice-secret-12"),
            MutualChap = IscsiChapSecret.Parse("target1:target-secret-34"),
        };
        using var server = new IscsiServer([new IscsiTarget("iqn.2026-11.io.blockrepl:vol", vol.Volume)], options, NullLogger.Instance);
        server.Listen(new IPEndPoint(IPAddress.Loopback, 0));

        static byte[] Md5(byte id, string secret, byte[] challenge) =>
#pragma warning disable CA5351 // CHAP is MD5 by definition
            MD5.HashData([id, .. Encoding.UTF8.GetBytes(secret), .. challenge]);
#pragma warning restore CA5351

        IscsiTestPdu Step(IscsiTestClient client, byte flags, uint itt, params (string, string)[] keys)
        {
            client.Send(IscsiTestClient.LoginBhs(flags, 0x23d000000007, itt, 1, 0), IscsiTestClient.Keys(keys));
            return client.Read();
        }

        foreach (var correct in new[] { true, false })
        {
            using var client = new IscsiTestClient(server.BoundEndpoints[0]);
            // Security stage (CSG 0), asking to go on to the operational stage (T, NSG 1).
            var first = Step(client, 0x81, 1, ("InitiatorName", "iqn.2026-11.test:chap"), ("SessionType", "Normal"),
                ("TargetName", "iqn.2026-11.io.blockrepl:vol"), ("AuthMethod", "CHAP,None"));
            Assert.Equal(0, first.Bhs[36]);
            Assert.Equal("CHAP", first.Keys()["AuthMethod"]);
            Assert.Equal(0, first.Flags & 0x80); // no transit before authentication

            var challenge = Step(client, 0x81, 1, ("CHAP_A", "7,5")).Keys();
            Assert.Equal("5", challenge["CHAP_A"]);
            var id = byte.Parse(challenge["CHAP_I"], System.Globalization.CultureInfo.InvariantCulture);
            var c = Convert.FromHexString(challenge["CHAP_C"][2..]);
            Assert.True(c.Length >= 16, "the target's challenge is too short");

            var secret = correct ? "alice-secret-12" : "alice-secret-13";
            var myChallenge = RandomNumberGenerator.GetBytes(16);
            var answer = Step(client, 0x81, 1, ("CHAP_N", "alice"), ("CHAP_R", "0x" + Convert.ToHexString(Md5(id, secret, c))),
                ("CHAP_I", "42"), ("CHAP_C", "0b" + Convert.ToBase64String(myChallenge)));
            if (!correct)
            {
                Assert.Equal(0x0201, answer.Bhs[36] << 8 | answer.Bhs[37]); // authentication failure
                Assert.True(client.WaitForClose());
                continue;
            }

            Assert.Equal(0, answer.Bhs[36]);
            Assert.Equal(0x81, answer.Flags & 0x83); // T, NSG 1: on to the operational stage
            var keys = answer.Keys();
            Assert.Equal("target1", keys["CHAP_N"]);
            Assert.Equal(Md5(42, "target-secret-34", myChallenge), Convert.FromHexString(keys["CHAP_R"][2..]));
        }
    }

    [Fact]
    public void ChapLogin_InitiatorReflectsTheTargetsChallenge_Refused()
    {
        using var vol = new TempVolume(size: 1 << 20);
        var options = new IscsiServerOptions { Chap = IscsiChapSecret.Parse("alice:alice-secret-12"), MutualChap = IscsiChapSecret.Parse("t:target-secret-34") };
        using var server = new IscsiServer([new IscsiTarget("iqn.2026-11.io.blockrepl:vol", vol.Volume)], options, NullLogger.Instance);
        server.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var client = new IscsiTestClient(server.BoundEndpoints[0]);
        client.Send(IscsiTestClient.LoginBhs(0x81, 9, 1, 1, 0), IscsiTestClient.Keys(("InitiatorName", "iqn.2026-11.test:x"),
            ("TargetName", "iqn.2026-11.io.blockrepl:vol"), ("AuthMethod", "CHAP")));
        client.Read();
        client.Send(IscsiTestClient.LoginBhs(0x81, 9, 1, 1, 0), IscsiTestClient.Keys(("CHAP_A", "5")));
        var challenge = client.Read().Keys();
        var id = byte.Parse(challenge["CHAP_I"], System.Globalization.CultureInfo.InvariantCulture);
#pragma warning disable CA5351
        var response = MD5.HashData([id, .. "alice-secret-12"u8.ToArray(), .. Convert.FromHexString(challenge["CHAP_C"][2..])]);
#pragma warning restore CA5351
        // The initiator sends the target's own challenge back to learn the target's answer to it.
        client.Send(IscsiTestClient.LoginBhs(0x81, 9, 1, 1, 0), IscsiTestClient.Keys(("CHAP_N", "alice"),
            ("CHAP_R", "0x" + Convert.ToHexString(response)), ("CHAP_I", challenge["CHAP_I"]), ("CHAP_C", challenge["CHAP_C"])));
        var refused = client.Read();
        Assert.Equal(0x0201, refused.Bhs[36] << 8 | refused.Bhs[37]);
        Assert.DoesNotContain("CHAP_R", refused.Keys().Keys);
    }
}
