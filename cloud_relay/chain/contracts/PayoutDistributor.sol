// SPDX-License-Identifier: LicenseRef-Proprietary
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Disbursements by Merkle claims (issue 19), the usual distributor pattern.
/// @notice For each (period, currency token) the settler (the relay) publishes the root of a tree of
/// (index, account, amount) leaves, exactly what the relay's ledger owes each owner to the minor unit, and deposits
/// the total in the same transaction. Anyone may then claim a leaf with its proof; the amount goes to the leaf's
/// account, once.
/// @dev Leaves are OpenZeppelin StandardMerkleTree leaves: keccak256(bytes.concat(keccak256(abi.encode(index,
/// account, amount)))), pairs hashed sorted (MerkleProof). The double hash keeps a leaf from being read as an inner
/// node. Tokens are assumed to transfer exact amounts (no fee on transfer): the relay chooses the currency token.
contract PayoutDistributor is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    struct Distribution {
        bytes32 root;
        uint256 total;
        uint256 claimed;
    }

    mapping(bytes32 period => mapping(address token => Distribution)) private _distributions;
    mapping(bytes32 period => mapping(address token => mapping(uint256 word => uint256))) private _claimedBits;

    event Published(bytes32 indexed period, address indexed token, bytes32 root, uint256 total);
    event Claimed(bytes32 indexed period, address indexed token, uint256 indexed index, address account, uint256 amount);

    error AlreadyPublished(bytes32 period, address token);
    error NotPublished(bytes32 period, address token);
    error AlreadyClaimed(bytes32 period, address token, uint256 index);
    error InvalidProof();
    error ZeroIdentifier();
    error OverClaimed(bytes32 period, address token);

    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Publish the period's claims for `token` and pull their `total` from the caller.
    function publish(bytes32 period, address token, bytes32 root, uint256 total) external onlyRole(SETTLER_ROLE) {
        if (period == bytes32(0) || token == address(0) || root == bytes32(0)) revert ZeroIdentifier();
        Distribution storage d = _distributions[period][token];
        if (d.root != bytes32(0)) revert AlreadyPublished(period, token);
        d.root = root;
        d.total = total;
        emit Published(period, token, root, total);
        IERC20(token).safeTransferFrom(msg.sender, address(this), total);
    }

    /// @notice Pay leaf `index` (`amount` to `account`) of the period's tree for `token`; anyone may call.
    function claim(
        bytes32 period,
        address token,
        uint256 index,
        address account,
        uint256 amount,
        bytes32[] calldata proof
    ) external {
        Distribution storage d = _distributions[period][token];
        if (d.root == bytes32(0)) revert NotPublished(period, token);
        if (_isClaimed(period, token, index)) revert AlreadyClaimed(period, token, index);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))));
        if (!MerkleProof.verifyCalldata(proof, d.root, leaf)) revert InvalidProof();
        _claimedBits[period][token][index >> 8] |= uint256(1) << (index & 0xff);
        d.claimed += amount;
        if (d.claimed > d.total) revert OverClaimed(period, token); // a wrong tree can never pay out more than it holds
        emit Claimed(period, token, index, account, amount);
        IERC20(token).safeTransfer(account, amount);
    }

    function isClaimed(bytes32 period, address token, uint256 index) external view returns (bool) {
        return _isClaimed(period, token, index);
    }

    function published(bytes32 period, address token)
        external
        view
        returns (bytes32 root, uint256 total, uint256 claimed)
    {
        Distribution storage d = _distributions[period][token];
        return (d.root, d.total, d.claimed);
    }

    function _isClaimed(bytes32 period, address token, uint256 index) private view returns (bool) {
        return (_claimedBits[period][token][index >> 8] >> (index & 0xff)) & 1 == 1;
    }
}
